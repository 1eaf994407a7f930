"""A stand-in for an XNAT server, for the XNAT target's tests.

XNAT is a large Java web application (Tomcat, PostgreSQL) that cannot run here, so this small
HTTP server implements the two documented REST endpoints the target uses, as XNAT answers them:
- GET /data/projects/<id>?format=json: 200 for a project that exists, 404 for one that does not;
- POST /data/services/import?PROJECT_ID=..&SUBJECT_ID=..&EXPT_LABEL=..&overwrite=..&inbody=true,
  the image session import service, with a zip of DICOM files as the body: 200 and the new
  session's URI as text; overwrite=delete replaces the session's files.
Both want HTTP basic authentication (401 otherwise). It keeps what it imported, in memory.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 256 * 1024 * 1024


@dataclass
class XnatStandIn:
    user: str
    password: str
    projects: set[str]
    # (project, subject, session label) -> file name -> bytes
    sessions: dict[tuple[str, str, str], dict[str, bytes]] = field(default_factory=dict)
    imports: list[dict[str, str]] = field(default_factory=list)  # the query of each import
    fail_imports: int = 0  # answer the next this many imports with HTTP 500
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def start_xnat_standin(user: str, password: str, projects: set[str]) -> XnatStandIn:
    xnat = XnatStandIn(user, password, projects)
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, code: int, text: str, kind: str = "text/plain") -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="XNAT"')
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == expected:
                return True
            self._answer(401, "Login required")
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            parts = urlsplit(self.path).path.strip("/").split("/")
            if len(parts) == 3 and parts[:2] == ["data", "projects"]:
                if parts[2] in xnat.projects:
                    result = {"ResultSet": {"Result": [{"ID": parts[2]}]}}
                    self._answer(200, json.dumps({"items": [result]}), "application/json")
                else:
                    self._answer(404, "project not found")
                return
            self._answer(404, "not found")

        def do_POST(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY))
            if not self._authorized():
                return
            if split.path != "/data/services/import":
                self._answer(404, "not found")
                return
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            with lock:
                xnat.imports.append(query)
                if xnat.fail_imports > 0:
                    xnat.fail_imports -= 1
                    self._answer(500, "The server encountered an internal error")
                    return
            if self.headers.get("Content-Type") != "application/zip":
                self._answer(415, "unsupported media type")
                return
            project = query.get("PROJECT_ID", "")
            subject, label = query.get("SUBJECT_ID", ""), query.get("EXPT_LABEL", "")
            if query.get("inbody") != "true" or not subject or not label:
                self._answer(400, "missing parameters")
                return
            if project not in xnat.projects:
                self._answer(404, f"project {project} not found")
                return
            try:
                with zipfile.ZipFile(io.BytesIO(body)) as archive:
                    files = {name: archive.read(name) for name in archive.namelist()}
            except zipfile.BadZipFile:
                self._answer(400, "not a zip file")
                return
            with lock:
                key = (project, subject, label)
                if query.get("overwrite") == "delete" or key not in xnat.sessions:
                    xnat.sessions[key] = {}
                xnat.sessions[key].update(files)
            self._answer(200, f"/data/prearchive/projects/{project}/20260101_000000000/{label}")

    xnat.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=xnat.server.serve_forever, daemon=True).start()
    return xnat
