"""One local HTTP server standing in for what a cloud node's watchdog talks to, in the documented
shapes: AWS IMDSv2 (token PUT, spot/instance-action, the instance profile's credentials), the GCE
metadata server (instance/preempted, the service account's token), Azure IMDS (compute name,
Scheduled Events, the identity's token), and the three object stores (S3 PutObject, GCS
simple upload, Azure Put Blob). Each store request is checked as the cloud would: S3's SigV4
signature is recomputed by botocore's own signer and the object put into moto's S3; GCS and
Azure Blob want the bearer token the metadata server issued."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.etree import ElementTree
from xml.sax.saxutils import escape

AWS_KEY, AWS_SECRET, AWS_SESSION = "ASIAEXAMPLENODE", "node/secret+key", "FwoGZXIvYXdzEXAMPLESESSION"
ROLE = "ct-test-node-role"
IMDS_TOKEN = "AQAEAEXAMPLE-imds-token=="
GCP_TOKEN, AZURE_TOKEN = "ya29.sandbox-gcp-token", "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.sandbox"
VM = "ct-test-0"


class State:
    def __init__(self) -> None:
        self.notice: dict[str, Any] | None = None  # what the metadata says once "preempted"
        self.objects: dict[str, bytes] = {}  # "bucket/key" -> body (GCS, Azure); S3 goes to moto
        self.rejected: list[str] = []  # requests a real cloud would refuse, and why
        self.s3: Any = None  # a moto boto3 client, where S3 is served
        self.calls: list[tuple[str, str]] = []
        self.hold = threading.Event()  # cleared: a GCS upload waits for it (a slow, big checkpoint)
        self.hold.set()
        self.in_flight = 0
        self.parts: list[int] = []  # S3 part numbers uploaded
        self.blocks: dict[str, dict[str, bytes]] = {}  # Azure: blob -> block id -> bytes
        self.block_lists: list[list[str]] = []


class Handler(BaseHTTPRequestHandler):
    state: State
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes | str = b"", kind: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reject(self, why: str, status: int = 403) -> None:
        self.state.rejected.append(why)
        self._send(status, json.dumps({"error": why}))

    # --- GET: metadata ----------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path, q = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
        self.state.calls.append(("GET", path))
        notice = self.state.notice
        if path.startswith("/s3/"):
            return self._s3_get(path[len("/s3/"):], q)
        if path.startswith("/storage/v1/b/"):  # GCS JSON API: objects.list, objects.get ?alt=media
            if self.headers.get("Authorization") != f"Bearer {GCP_TOKEN}":
                return self._reject("gcs: no or wrong bearer token", 401)
            bucket, _, rest = path[len("/storage/v1/b/"):].partition("/o")
            bucket = unquote(bucket)
            if not rest:
                names = sorted(k.split("/", 1)[1] for k in self.state.objects if k.startswith(bucket + "/"))
                page, token = self._page([n for n in names if n.startswith(q.get("prefix", ""))], q.get("pageToken"))
                return self._send(200, json.dumps({"kind": "storage#objects", "items": [{"name": n} for n in page],
                                                   **({"nextPageToken": token} if token else {})}))
            if q.get("alt") != "media":
                return self._reject("gcs: a download asks alt=media", 400)
            return self._send(200, self.state.objects[f"{bucket}/{unquote(rest[1:])}"], "application/octet-stream")
        if path.startswith("/blob/"):  # Azure Blob: List Blobs, Get Blob
            if self.headers.get("Authorization") != f"Bearer {AZURE_TOKEN}" or not self.headers.get("x-ms-version"):
                return self._reject("azure: no bearer token or x-ms-version", 401)
            container, _, blob = path[len("/blob/"):].partition("/")
            if not blob and q.get("restype") == "container" and q.get("comp") == "list":
                names = sorted(k.split("/", 1)[1] for k in self.state.objects if k.startswith(container + "/"))
                page, token = self._page([n for n in names if n.startswith(q.get("prefix", ""))], q.get("marker"))
                blobs = "".join(f"<Blob><Name>{escape(n)}</Name></Blob>" for n in page)
                return self._send(200, f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="{container}">'
                                       f"<Blobs>{blobs}</Blobs><NextMarker>{token or ''}</NextMarker></EnumerationResults>", "application/xml")
            return self._send(200, self.state.objects[f"{container}/{unquote(blob)}"], "application/octet-stream")
        if path.startswith("/latest/meta-data/"):
            if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
                return self._send(401)  # IMDSv2 only (http_tokens=required), as the program sets it
            rest = path[len("/latest/meta-data/"):]
            if rest == "spot/instance-action":
                return self._send(200, json.dumps(notice)) if notice else self._send(404, "Not Found", "text/html")
            if rest == "iam/security-credentials/":
                return self._send(200, ROLE, "text/plain")
            if rest == f"iam/security-credentials/{ROLE}":
                return self._send(200, json.dumps({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": AWS_KEY,
                                                   "SecretAccessKey": AWS_SECRET, "Token": AWS_SESSION,
                                                   "Expiration": "2099-01-01T00:00:00Z"}))
            return self._send(404)
        if path.startswith("/computeMetadata/v1/"):
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403, "Missing Metadata-Flavor:Google header.", "text/html")
            rest = path[len("/computeMetadata/v1/"):]
            if rest == "instance/preempted":
                return self._send(200, "TRUE" if notice else "FALSE", "application/text")
            if rest == "instance/service-accounts/default/token":
                return self._send(200, json.dumps({"access_token": GCP_TOKEN, "expires_in": 3599, "token_type": "Bearer"}))
            return self._send(404)
        if path.startswith("/metadata/"):
            if self.headers.get("Metadata") != "true":
                return self._send(400, json.dumps({"error": "Bad request. Required metadata header not specified"}))
            if path == "/metadata/instance/compute/name" and q.get("format") == "text":
                return self._send(200, VM, "text/plain")
            if path == "/metadata/scheduledevents" and q.get("api-version"):
                events = [notice] if notice else []
                return self._send(200, json.dumps({"DocumentIncarnation": 2 if notice else 1, "Events": events}))
            if path == "/metadata/identity/oauth2/token" and q.get("resource") == "https://storage.azure.com/":
                return self._send(200, json.dumps({"access_token": AZURE_TOKEN, "expires_in": "86399", "token_type": "Bearer",
                                                   "resource": q["resource"]}))
            return self._send(404)
        self._send(404)

    # --- PUT / POST: the IMDSv2 token and the object stores ---------------------------------

    def do_PUT(self) -> None:
        url = urlparse(self.path)
        self.state.calls.append(("PUT", url.path))
        if url.path == "/latest/api/token":
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._send(400)
            return self._send(200, IMDS_TOKEN, "text/plain")
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path.startswith("/s3/"):
            return self._s3(url.path[len("/s3/"):], q)
        if url.path.startswith("/blob/"):  # https://<account>.blob.core.windows.net/<container>/<blob>
            if self.headers.get("Authorization") != f"Bearer {AZURE_TOKEN}":
                return self._reject("azure: no or wrong bearer token", 401)
            blob = unquote(url.path[len("/blob/"):])
            if q.get("comp") == "block":  # Put Block: kept uncommitted until the block list names it
                if not self.headers.get("x-ms-version"):
                    return self._reject("azure: Put Block needs x-ms-version", 400)
                self.state.blocks.setdefault(blob, {})[q["blockid"]] = self._body()
                return self._send(201)
            if q.get("comp") == "blocklist":
                ids = [e.text for e in ElementTree.fromstring(self._body()).iter("Latest")]
                self.state.objects[blob] = b"".join(self.state.blocks[blob][i] for i in ids)
                self.state.block_lists.append(ids)
                return self._send(201)
            if self.headers.get("x-ms-blob-type") != "BlockBlob" or (self.headers.get("x-ms-version") or "") < "2017-11-09":
                return self._reject("azure: Put Blob needs x-ms-blob-type BlockBlob and an x-ms-version for Entra ID", 400)
            self.state.objects[unquote(url.path[len("/blob/"):])] = self._body()
            return self._send(201)
        self._send(404)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        self.state.calls.append(("POST", url.path))
        q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path.startswith("/s3/"):
            return self._s3_post(url.path[len("/s3/"):], q)
        prefix, suffix = "/upload/storage/v1/b/", "/o"
        if url.path.startswith(prefix) and url.path.endswith(suffix):
            if self.headers.get("Authorization") != f"Bearer {GCP_TOKEN}":
                return self._reject("gcs: no or wrong bearer token", 401)
            if q.get("uploadType") != "media" or not q.get("name"):
                return self._reject("gcs: a simple upload names uploadType=media and the object", 400)
            bucket = unquote(url.path[len(prefix):-len(suffix)])
            body = self._body()
            self.state.in_flight += 1
            self.state.hold.wait(60)
            self.state.in_flight -= 1
            self.state.objects[f"{bucket}/{q['name']}"] = body
            return self._send(200, json.dumps({"kind": "storage#object", "bucket": bucket, "name": q["name"]}))
        self._send(404)

    def _s3_signed(self, method: str) -> bool:
        """Whether the request carries a valid SigV4 signature (recomputed by botocore's signer)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = self.headers.get("Authorization") or ""
        try:
            fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
            access, day, region, service, _ = fields["Credential"].split("/")
        except ValueError:
            self._reject("s3: no SigV4 Authorization header")
            return False
        signed = fields["SignedHeaders"].split(";")
        request = AWSRequest(method=method, url=f"http://{self.headers['Host']}{self.path}",
                             headers={n: self.headers[n] for n in signed})
        request.context["timestamp"] = self.headers.get("x-amz-date", "")
        signer = S3SigV4Auth(Credentials(AWS_KEY, AWS_SECRET, AWS_SESSION), service, region)
        want = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if access != AWS_KEY or fields["Signature"] != want or "x-amz-security-token" not in signed:
            self._reject("s3: SignatureDoesNotMatch")
            return False
        return True

    def _s3(self, rest: str, q: dict[str, str]) -> None:
        """Path-style PutObject and UploadPart: into moto."""
        if self._s3_signed("PUT"):
            bucket, key = rest.split("/", 1)
            if "partNumber" in q:
                part = self.state.s3.upload_part(Bucket=bucket, Key=unquote(key), UploadId=q["uploadId"],
                                                 PartNumber=int(q["partNumber"]), Body=self._body())
                self.state.parts.append(int(q["partNumber"]))
                self.send_response(200)
                self.send_header("ETag", part["ETag"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.state.s3.put_object(Bucket=bucket, Key=unquote(key), Body=self._body())
            self._send(200)

    def _s3_post(self, rest: str, q: dict[str, str]) -> None:
        """CreateMultipartUpload (?uploads) and CompleteMultipartUpload (?uploadId=): moto's."""
        if not self._s3_signed("POST"):
            return
        bucket, key = rest.split("/", 1)
        if "uploads" in q:
            upload = self.state.s3.create_multipart_upload(Bucket=bucket, Key=unquote(key))["UploadId"]
            return self._send(200, f"<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{bucket}</Bucket>"
                                   f"<Key>{escape(unquote(key))}</Key><UploadId>{escape(upload)}</UploadId></InitiateMultipartUploadResult>", "application/xml")
        doc = ElementTree.fromstring(self._body())
        parts = [{"PartNumber": int(p.findtext("PartNumber")), "ETag": p.findtext("ETag")} for p in doc.iter("Part")]
        self.state.s3.complete_multipart_upload(Bucket=bucket, Key=unquote(key), UploadId=q["uploadId"], MultipartUpload={"Parts": parts})
        self._send(200, "<CompleteMultipartUploadResult/>", "application/xml")

    def _s3_get(self, rest: str, q: dict[str, str]) -> None:
        """ListObjectsV2 (two keys a page, so paging is used) and GetObject, from moto."""
        if not self._s3_signed("GET"):
            return
        bucket, _, key = rest.partition("/")
        if not key and q.get("list-type") == "2":
            page = self.state.s3.list_objects_v2(Bucket=bucket, Prefix=q.get("prefix", ""), MaxKeys=2,
                                                 **({"ContinuationToken": q["continuation-token"]} if "continuation-token" in q else {}))
            keys = "".join(f"<Contents><Key>{escape(o['Key'])}</Key><Size>{o['Size']}</Size></Contents>" for o in page.get("Contents", []))
            more = f"<NextContinuationToken>{escape(page['NextContinuationToken'])}</NextContinuationToken>" if page.get("IsTruncated") else ""
            return self._send(200, f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                                   f"<Name>{bucket}</Name><IsTruncated>{str(page['IsTruncated']).lower()}</IsTruncated>{keys}{more}</ListBucketResult>",
                              "application/xml")
        self._send(200, self.state.s3.get_object(Bucket=bucket, Key=unquote(key))["Body"].read(), "application/octet-stream")

    def _page(self, names: list[str], token: str | None) -> tuple[list[str], str | None]:
        start = int(token or 0)
        return names[start:start + 2], (str(start + 2) if start + 2 < len(names) else None)


def serve(state: State) -> tuple[ThreadingHTTPServer, str]:
    handler = type("H", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"
