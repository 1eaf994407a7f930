"""The Targets pages: the list, and one target's form (made from its type's model)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse

from caduceus.core.config import store
from caduceus.web.api.engines import reader
from caduceus.web.api.targets import KINDS, as_seen_by, summary
from caduceus.web.model_forms import form_fields
from caduceus.web.pages.rendering import PageViewer, render

router = APIRouter(include_in_schema=False)

KIND_LABELS = {
    "dicom": "DICOM",
    "dicomtls": "DICOM over TLS",
    "folder": "Folder",
    "dicomweb": "DICOMweb (STOW-RS)",
    "s3": "S3",
    "sftp": "SFTP",
    "rsync": "rsync over SSH",
    "xnat": "XNAT",
    "dummy": "Dummy (keeps nothing)",
}

# For the fields whose model says nothing about them.
HELP = {
    "host": "name or address of the receiving system",
    "port": "its DICOM port",
    "called_aet": "the AE title of the receiving system",
    "calling_aet": "our AE title when we call it",
    "send_to_sender": "send back to the address the series came from (then no host is needed)",
    "pass_sender_aet": "call the target with the AE title of the series' sender",
    "pass_receiver_aet": "call the target with the AE title the sender called us by",
    "verify_hostname": "check that the target's certificate names its host",
    "path": "a folder on the dispatcher's machine",
    "file_filter": "only files whose names match this pattern (e.g. *.dcm); empty: all",
    "exclude": "files not to send, one pattern a line (e.g. *.txt): mercure's file_filter",
    "stow_url_prefix": "path between the URL and /studies for sending (STOW-RS), if any",
    "qido_url_prefix": "path between the URL and /studies for queries (QIDO-RS), if any",
    "wado_url_prefix": "path of the retrieve service (WADO-RS); kept, not used for sending",
    "run_on_complete": "run <folder>/mercure_complete.sh on the server after each delivery",
    "project_id": "the XNAT project that receives the sessions",
    "group_access": "let the folder's group read the delivered files (750/640 instead of 700/600)",
    "url": "the base URL, http:// or https:// (DICOMweb: instances go to <url>/studies; "
    "file:///folder stores them in a local folder)",
    "username": "for basic authentication",
    "password": "for basic authentication",
    "tls_ca_certificate": "CA file that signed the server's certificate; empty: the system's",
    "verify_tls": "check the server's certificate",
    "timeout_seconds": "seconds to wait for an answer",
    "bucket": "the bucket's name",
    "prefix": "put the files under this key prefix",
    "access_key_id": "empty: the dispatcher's own credentials (environment, instance role)",
    "secret_access_key": "belongs to the access key ID",
    "user": "the login name",
    "private_key_file": "a key file on the dispatcher's machine (instead of a password)",
    "folder": "the folder on the server",
    "host_key": "the server's public key, e.g. ssh-ed25519 AAAA...",
    "accept_unknown_host_key": "connect without checking the server's key (not safe)",
    "comment": "a note for the people who read this page",
}


@router.get("/targets", response_class=HTMLResponse)
def page(request: Request, who: PageViewer) -> HTMLResponse:
    config = store.current_or_default(reader(request))
    targets = [summary(name, as_seen_by(t, who)) for name, t in config.targets.items()]
    return render(request, "targets.html", who, "Targets", targets=targets, kinds=KIND_LABELS)


@router.get("/targets/{name}", response_class=HTMLResponse)
def target_page(
    request: Request,
    name: str,
    who: PageViewer,
    kind: Annotated[str | None, Query(alias="type")] = None,
) -> HTMLResponse:
    """One target's form; /targets/new?type=dicom is a new one's (unless a target is named
    "new" and no type is asked for)."""
    config = store.current_or_default(reader(request))
    target = config.targets.get(name)
    if target is not None and kind is None:
        shown = as_seen_by(target, who).model_dump(mode="json")
        return render(
            request,
            "target.html",
            who,
            f"Target {name}",
            name=name,
            kind=target.type,
            kinds=KIND_LABELS,
            fields=form_fields(KINDS[target.type], shown, HELP),
            creating=False,
        )
    if name != "new":
        raise HTTPException(status.HTTP_404_NOT_FOUND, "there is no such target")
    if not who.can("admin"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this page needs the admin role")
    chosen = kind if kind in KINDS else None
    return render(
        request,
        "target.html",
        who,
        "New target",
        name="",
        kind=chosen,
        kinds=KIND_LABELS,
        fields=form_fields(KINDS[chosen], None, HELP) if chosen else [],
        creating=True,
    )
