"""The Modules pages: the list, and one module's form in groups (what runs, its settings,
its limits)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from caduceus.core.config import store
from caduceus.core.config.models import Module
from caduceus.web.api.control import module_shown
from caduceus.web.api.engines import reader
from caduceus.web.model_forms import FormField, form_fields
from caduceus.web.pages.rendering import PageViewer, render

router = APIRouter(include_in_schema=False)

HELP = {
    "image": "a container image, e.g. mercureimaging/mercure-dummy-processor (or a command)",
    "command": "instead of an image, a local command: the program, then each argument",
    "settings": 'given to the module in task.json (process.settings), e.g. {"threshold": 0.5}; '
    "a rule may add its own",
    "secret_settings": "settings whose values are secret: masked here, encrypted when stored "
    "(names with key, token, password or secret in them are secret anyway)",
    "environment": 'environment variables, e.g. {"MODEL": "small"}',
    "network": "let the module reach the network",
    "requires_root": "run as root in the container (only where the processor allows it)",
    "capabilities": "Linux capabilities granted to the container, e.g. NET_BIND_SERVICE "
    "(a short list; never SYS_ADMIN or SYS_PTRACE)",
    "persistence": "keep a folder from one run to the next (persistence/<module>)",
    "memory_mb": "memory limit in megabytes",
    "cpus": "CPU limit (1.5: one and a half cores)",
    "timeout_seconds": "the module is stopped after this many seconds",
    "gpu": "give the container the machine's GPUs",
    "volumes": "extra bind mounts HOST:CONTAINER[:ro], HOST inside the allowed volume root",
    "pull": "fetch the image only when missing, or before every run",
    "sandbox": "run a local command in a bubblewrap sandbox (where bwrap is installed)",
    "docker_arguments": 'more container options from an allow-list, e.g. {"shm_size": "1g"}; '
    "privileged, host namespaces, devices and the like only with requires_root where the "
    "processor allows root modules",
    "node_selector": 'Kubernetes only: the node labels its pods need, e.g. {"gpu": "a100"}',
    "persistence_folder_name": "share the persistent folder with the modules naming the same "
    "one (empty: the module's own)",
    "contact": "who to ask about this module",
    "comment": "a note for the people who read this page",
}
GROUPS = (
    ("What runs", ("image", "command", "pull", "sandbox")),
    ("Settings", ("settings", "secret_settings", "environment")),
    (
        "Limits",
        (
            "memory_mb",
            "cpus",
            "timeout_seconds",
            "network",
            "gpu",
            "requires_root",
            "capabilities",
            "volumes",
            "docker_arguments",
            "node_selector",
        ),
    ),
    ("More", ("persistence", "persistence_folder_name", "contact", "comment")),
)


def grouped(fields: list[FormField]) -> list[tuple[str, list[FormField]]]:
    """The fields in GROUPS' order; a field the groups do not name goes to the last one."""
    named = {name for _, names in GROUPS for name in names}
    by_name = {f.name: f for f in fields}
    groups = [(label, [by_name[n] for n in names if n in by_name]) for label, names in GROUPS]
    groups[-1][1].extend(f for f in fields if f.name not in named)
    return groups


@router.get("/modules", response_class=HTMLResponse)
def page(request: Request, who: PageViewer) -> HTMLResponse:
    modules = store.current_or_default(reader(request)).modules
    return render(request, "modules.html", who, "Modules", modules=modules)


@router.get("/modules/{name}", response_class=HTMLResponse)
def module_page(request: Request, name: str, who: PageViewer) -> HTMLResponse:
    """One module's form; /modules/new is a new one's (unless a module is named "new")."""
    module = store.current_or_default(reader(request)).modules.get(name)
    if module is None and name != "new":
        raise HTTPException(status.HTTP_404_NOT_FOUND, "there is no such module")
    if module is None and not who.can("admin"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this page needs the admin role")
    current = module_shown(module.model_dump(mode="json"), who) if module is not None else None
    return render(
        request,
        "module.html",
        who,
        f"Module {name}" if module is not None else "New module",
        name=name if module is not None else "",
        creating=module is None,
        groups=grouped(form_fields(Module, current, HELP)),
    )
