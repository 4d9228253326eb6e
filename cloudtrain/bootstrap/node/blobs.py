"""Writing files into the cluster's checkpoint bucket and reading them back, run ON a cloud node
(by its watchdog; stdlib only: no SDK on the node). `store` is the cluster's `checkpoints` output
(provisioner/contract.py: cloud, bucket, url, region); the node acts as itself, with the
identity the Pulumi program gave it (provisioner/buckets.py), its credentials from the
instance metadata service, never a key of the caller's.

- aws: S3 PutObject (`PUT {url}/{key}`), signed with Signature Version 4 (AWS General
  Reference, "Signature Version 4 signing process"; S3 API Reference, "Authenticating Requests:
  Using the Authorization Header") with the instance profile's temporary credentials from IMDSv2
  (`PUT /latest/api/token`, then `/latest/meta-data/iam/security-credentials/<role>`; EC2 User
  Guide, "Retrieve security credentials from instance metadata"). The payload is
  `UNSIGNED-PAYLOAD`, allowed over HTTPS, so a large file is read once, while it travels.
- gcp: the JSON API's simple upload, `POST {url}/upload/storage/v1/b/<bucket>/o?uploadType=media&name=<key>`
  (Cloud Storage docs, "objects: insert", "Perform a single-request upload") with the service
  account's token from the metadata server (`.../instance/service-accounts/default/token`,
  `Metadata-Flavor: Google`; Compute Engine docs, "Authenticate workloads using service accounts").
- azure: Put Blob, `PUT {url}/{key}` with `x-ms-blob-type: BlockBlob` (Azure Storage REST
  reference, "Put Blob"; Microsoft Entra tokens need x-ms-version 2017-11-09 or later,
  "Authorize with Microsoft Entra ID") and the VM identity's token for `https://storage.azure.com/`
  from IMDS (`/metadata/identity/oauth2/token`, `Metadata: true`).

Reading back, for a replacement node (`python3 blobs.py restore STORE_JSON PREFIX FOLDER`, run
beside node_checkpoints.py: the relative paths restored, as JSON): S3 ListObjectsV2 and GetObject,
GCS objects.list and `?alt=media`, Azure List Blobs and Get Blob, every page; names a writer
leaves behind are skipped and each file lands under a temp name, then is renamed into place.

A file larger than one part (64 MiB) goes up in parts on S3 (multipart upload: one PUT takes
5 GiB at most) and Azure (Put Block, then Put Block List); GCS's single request takes 5 TiB.
CLOUDTRAIN_IMDS_URL (AWS and Azure) / CLOUDTRAIN_GCE_METADATA_URL point the metadata calls
elsewhere: for tests only.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from xml.etree import ElementTree
from xml.sax.saxutils import escape

IMDS = "http://169.254.169.254"
GCE_METADATA = "http://metadata.google.internal"
AZURE_TOKEN_API = "2018-02-01"
AZURE_STORAGE_VERSION = "2021-08-06"
TIMEOUT_S = 20
UPLOAD_TIMEOUT_S = 600
PART_BYTES = 64 << 20


def _metadata_opener():
    # Metadata endpoints must never go through a proxy (Azure IMDS docs; AWS and GCP alike).
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def imds_url():
    return os.environ.get("CLOUDTRAIN_IMDS_URL", IMDS)


def gce_url():
    return os.environ.get("CLOUDTRAIN_GCE_METADATA_URL", GCE_METADATA)


_imds_token = {}


def aws_imds_token():
    """An IMDSv2 session token, asked for again after an hour (it is granted for six)."""
    if _imds_token.get("until", 0) < time.time():
        req = urllib.request.Request(f"{imds_url()}/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        with _metadata_opener().open(req, timeout=TIMEOUT_S) as r:
            _imds_token.update(value=r.read().decode().strip(), until=time.time() + 3600)
    return _imds_token["value"]


def aws_imds_get(path, token):
    req = urllib.request.Request(f"{imds_url()}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token})
    try:
        with _metadata_opener().open(req, timeout=TIMEOUT_S) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 401:
            _imds_token.clear()  # expired or refused: the next look asks for a new one
        raise


class Credentials:
    """A cloud's short-lived credentials for this node, fetched again before they expire."""

    def __init__(self, cloud):
        self.cloud, self.value, self.until = cloud, None, 0.0

    def get(self):
        if self.value is None or time.time() > self.until - 300:
            self.value, lifetime = _FETCH[self.cloud]()
            self.until = time.time() + lifetime
        return self.value


def _aws_credentials():
    token = aws_imds_token()
    role = aws_imds_get("iam/security-credentials/", token).split()[0]
    doc = json.loads(aws_imds_get(f"iam/security-credentials/{role}", token))
    return (doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token")), 900.0  # rotated hourly; asked often


def _gcp_token():
    req = urllib.request.Request(f"{gce_url()}/computeMetadata/v1/instance/service-accounts/default/token",
                                 headers={"Metadata-Flavor": "Google"})
    with _metadata_opener().open(req, timeout=TIMEOUT_S) as r:
        doc = json.loads(r.read().decode())
    return doc["access_token"], float(doc.get("expires_in", 600))


def _azure_token():
    query = urllib.parse.urlencode({"api-version": AZURE_TOKEN_API, "resource": "https://storage.azure.com/"})
    req = urllib.request.Request(f"{imds_url()}/metadata/identity/oauth2/token?{query}", headers={"Metadata": "true"})
    with _metadata_opener().open(req, timeout=TIMEOUT_S) as r:
        doc = json.loads(r.read().decode())
    return doc["access_token"], float(doc.get("expires_in", 600))


_FETCH = {"aws": _aws_credentials, "gcp": _gcp_token, "azure": _azure_token}


def _hmac(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(method, url, region, creds, now=None):
    """The headers that sign an S3 request with an unsigned payload (SigV4, header form)."""
    access, secret, session = creds
    parts = urllib.parse.urlsplit(url)
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers = {"host": parts.netloc, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": stamp}
    if session:
        headers["x-amz-security-token"] = session
    names = sorted(headers)
    pairs = sorted((urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~"))
                   for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query = "&".join(f"{k}={v}" for k, v in pairs)  # sorted by name, then value
    canonical = "\n".join([
        method, parts.path or "/", query,  # the path is sent URI-encoded once (Store.request), and signed so
        "".join(f"{n}:{headers[n].strip()}\n" for n in names), ";".join(names), "UNSIGNED-PAYLOAD",
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    del headers["host"]  # urllib sends it from the URL
    return headers


def part_bytes():
    """The part size of a multipart upload (S3: 5 MiB at least but for the last part, 10000 parts
    at most; Azure: 50000 blocks): 64 MiB, so up to 625 GiB; CLOUDTRAIN_BLOB_PART_BYTES to change."""
    try:
        return max(5 << 20, int(os.environ.get("CLOUDTRAIN_BLOB_PART_BYTES", PART_BYTES)))
    except ValueError:
        return PART_BYTES


class Store:
    """The cluster's bucket as this node writes it: `put(path, key)`."""

    def __init__(self, store):
        self.cloud, self.bucket, self.url = store["cloud"], store["bucket"], store["url"].rstrip("/")
        self.region = store.get("region") or ""
        self.creds = Credentials(self.cloud)

    def describe(self):
        return f"{self.cloud} {self.bucket}"

    def request(self, key, size):
        """(method, url, headers) of the request that writes `key`."""
        quoted = urllib.parse.quote(key, safe="/-_.~")
        if self.cloud == "aws":
            url = f"{self.url}/{quoted}"
            return "PUT", url, sigv4_headers("PUT", url, self.region, self.creds.get())
        token = self.creds.get()
        if self.cloud == "gcp":
            bucket = urllib.parse.quote(self.bucket, safe="")
            url = f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={urllib.parse.quote(key, safe='')}"
            return "POST", url, {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        if self.cloud == "azure":
            return "PUT", f"{self.url}/{quoted}", {"Authorization": f"Bearer {token}", "x-ms-version": AZURE_STORAGE_VERSION,
                                                   "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
        raise ValueError(f"no checkpoint store for cloud {self.cloud!r}")

    def _signed(self, method, url):
        if self.cloud == "aws":
            return sigv4_headers(method, url, self.region, self.creds.get())
        headers = {"Authorization": f"Bearer {self.creds.get()}"}
        return {**headers, "x-ms-version": AZURE_STORAGE_VERSION} if self.cloud == "azure" else headers

    def _get(self, url):
        return urllib.request.urlopen(urllib.request.Request(url, headers=self._signed("GET", url)), timeout=UPLOAD_TIMEOUT_S)

    def keys(self, prefix):
        """Every object key under `prefix` (S3 ListObjectsV2, GCS objects.list, Azure List Blobs; all pages)."""
        found, token = [], None
        while True:
            q = urllib.parse.quote
            if self.cloud == "aws":
                url = f"{self.url}/?list-type=2&prefix={q(prefix, safe='')}" + (f"&continuation-token={q(token, safe='')}" if token else "")
                with self._get(url) as r:
                    doc = ElementTree.fromstring(r.read())
                found += [e.text for e in doc.iter() if e.tag.endswith("}Key") or e.tag == "Key"]
                token = next((e.text for e in doc.iter() if e.tag.endswith("NextContinuationToken")), None)
            elif self.cloud == "gcp":
                url = f"{self.url}/storage/v1/b/{q(self.bucket, safe='')}/o?prefix={q(prefix, safe='')}" + (f"&pageToken={q(token, safe='')}" if token else "")
                with self._get(url) as r:
                    doc = json.loads(r.read().decode())
                found += [item["name"] for item in doc.get("items", [])]
                token = doc.get("nextPageToken")
            else:
                url = f"{self.url}?restype=container&comp=list&prefix={q(prefix, safe='')}" + (f"&marker={q(token, safe='')}" if token else "")
                with self._get(url) as r:
                    doc = ElementTree.fromstring(r.read())
                found += [e.text for e in doc.iter("Name") if e.text]
                token = next((e.text for e in doc.iter("NextMarker") if e.text), None)
            if not token:
                return found

    def get(self, key, dest):
        """The object `key` into `dest`, through a temp name beside it: never a half-written file."""
        if self.cloud == "gcp":
            url = f"{self.url}/storage/v1/b/{urllib.parse.quote(self.bucket, safe='')}/o/{urllib.parse.quote(key, safe='')}?alt=media"
        else:
            url = f"{self.url}/{urllib.parse.quote(key, safe='/-_.~')}"
        tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.tmp")
        with self._get(url) as r, open(tmp, "wb") as f:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
        os.replace(tmp, dest)

    def _call(self, method, url, body=b"", extra=None):
        headers = {**self._signed(method, url), **(extra or {}), "Content-Length": str(len(body))}
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=UPLOAD_TIMEOUT_S) as r:
            return r.headers, r.read()

    def _parts(self, path, size):
        part = part_bytes()
        with open(path, "rb") as f:
            for n in range(1, (size + part - 1) // part + 1):
                yield n, f.read(part)

    def _put_s3_parts(self, path, url, size):
        """S3 multipart upload (S3 API Reference: CreateMultipartUpload, UploadPart,
        CompleteMultipartUpload; AbortMultipartUpload when a part fails)."""
        _, body = self._call("POST", url + "?uploads")
        upload = urllib.parse.quote(next(e.text for e in ElementTree.fromstring(body).iter() if e.tag.endswith("UploadId")), safe="")
        try:
            parts = []
            for n, data in self._parts(path, size):
                headers, _ = self._call("PUT", f"{url}?partNumber={n}&uploadId={upload}", data)
                parts.append(f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(headers['ETag'])}</ETag></Part>")
            _, body = self._call("POST", f"{url}?uploadId={upload}", f"<CompleteMultipartUpload>{''.join(parts)}</CompleteMultipartUpload>".encode())
            if b"<Error>" in body:  # S3 may answer 200 and then fail the completion in the body
                raise OSError(f"CompleteMultipartUpload failed: {body[:300]!r}")
        except BaseException:
            try:
                self._call("DELETE", f"{url}?uploadId={upload}")
            except Exception:  # noqa: BLE001 - the bucket's lifecycle is all that is left
                pass
            raise

    def _put_azure_blocks(self, path, url, size):
        """Azure Put Block per part, then Put Block List (Azure Storage REST reference)."""
        ids = []
        for n, data in self._parts(path, size):
            block = base64.b64encode(f"{n:08d}".encode()).decode()  # ids of one blob all the same length
            self._call("PUT", f"{url}?comp=block&blockid={urllib.parse.quote(block, safe='')}", data)
            ids.append(f"<Latest>{block}</Latest>")
        xml = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{"".join(ids)}</BlockList>'
        self._call("PUT", f"{url}?comp=blocklist", xml.encode(), {"Content-Type": "application/xml"})

    def put(self, path, key):
        size = os.path.getsize(path)
        if size > part_bytes() and self.cloud in ("aws", "azure"):  # past one request's limit, or close to it
            url = f"{self.url}/{urllib.parse.quote(key, safe='/-_.~')}"
            return (self._put_s3_parts if self.cloud == "aws" else self._put_azure_blocks)(path, url, size)
        method, url, headers = self.request(key, size)
        with open(path, "rb") as body:
            req = urllib.request.Request(url, data=body, method=method, headers={**headers, "Content-Length": str(size)})
            with urllib.request.urlopen(req, timeout=UPLOAD_TIMEOUT_S) as r:
                r.read()
                return r.status


def restore(store, prefix, folder, partial):
    """Every object under `prefix/` into `folder`, skipping names `partial(rel)` says a writer
    leaves behind; the relative paths restored. For a new node of a recovered job."""
    bucket, base, got = Store(store), prefix.rstrip("/") + "/", []
    for key in bucket.keys(base):
        rel = key[len(base):]
        if not rel or ".." in rel.split("/") or rel.startswith("/") or partial(rel):
            continue
        dest = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        bucket.get(key, dest)
        got.append(rel)
    return got


if __name__ == "__main__":  # python3 blobs.py restore STORE_JSON PREFIX FOLDER (beside node_checkpoints.py)
    import sys

    import node_checkpoints

    if sys.argv[1:2] != ["restore"] or len(sys.argv) != 5:
        sys.exit("usage: blobs.py restore STORE_JSON PREFIX FOLDER")
    print(json.dumps(restore(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], node_checkpoints.looks_partial)))
