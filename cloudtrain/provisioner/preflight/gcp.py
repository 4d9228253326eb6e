"""GCP pre-flight: application default credentials load and name a project."""

from __future__ import annotations

import os

from cloudtrain.errors import MissingTool, PreflightError

_ADC_HINT = "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key file"


def project_and_credentials() -> str:
    """The project the cluster goes into; refuses when ADC are missing or name no project."""
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
    except ImportError as e:
        raise MissingTool("google-auth is not installed", "pip install 'cloudtrain[cloud]'") from e
    try:
        _, adc_project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError as e:
        raise PreflightError("no usable Google application default credentials", _ADC_HINT) from e
    except GoogleAuthError as e:
        raise PreflightError(f"Google credentials are unusable: {e}", _ADC_HINT) from e
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT") or adc_project
    if not project:
        raise PreflightError("no GCP project is set", "run `gcloud config set project PROJECT_ID` or set GOOGLE_CLOUD_PROJECT")
    return project


def check() -> dict[str, str]:
    """Extra stack config GCP needs: the project."""
    return {"gcp:project": project_and_credentials()}
