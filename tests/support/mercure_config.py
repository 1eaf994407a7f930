"""A mercure.json as a mercure installation writes it, with targets, modules and rules of
every kind, for the importers (command line and web) to read."""

from __future__ import annotations

MERCURE = {
    "appliance_name": "master",
    "port": 11112,
    "incoming_folder": "/opt/mercure/data/incoming",
    "router_scan_interval": 1,
    "series_complete_trigger": 45,
    "study_complete_trigger": 600,
    "offpeak_start": "22:00",
    "offpeak_end": "06:00",
    "retry_delay": 600,
    "retry_max": 3,
    "graphite_ip": "10.1.1.1",
    "targets": {
        "pacs": {
            "target_type": "dicom",
            "ip": "10.0.0.5",
            "port": "104",
            "aet_target": "PACS",
            "aet_source": "MERCURE",
            "contact": "",
            "comment": "main PACS",
        },
        "share": {"target_type": "folder", "folder": "/mnt/share", "file_filter": "*.dcm"},
        "remote": {
            "target_type": "xnat",
            "project_id": "P1",
            "user": "u",
            "host": "h",
            "password": "p",
        },
        "drop": {
            "target_type": "sftp",
            "folder": "/in",
            "user": "u",
            "host": "sftp.example",
            "password": "p",
        },
        "web": {
            "target_type": "dicomweb",
            "url": "https://pacs.example/dicom-web",
            "http_user": "u",
            "http_password": "p",
        },
        "tls": {
            "target_type": "dicomtls",
            "ip": "10.0.0.6",
            "port": "2762",
            "aet_target": "SECURE",
            "tls_key": "/etc/k.pem",
            "tls_cert": "/etc/c.pem",
            "ca_cert": "/etc/ca.pem",
        },
    },
    "modules": {
        "ai": {
            "docker_tag": "vendor/ai:2",
            "settings": {"threshold": 0.5},
            # JSON inside a string, as mercure's Module model keeps them.
            "environment": '{"MODEL": "large"}',
            "additional_volumes": '{"/models": {"bind": "/models", "mode": "ro"}}',
            "requires_root": False,
            "contact": "",
        },
    },
    "rules": {
        "ct": {
            "rule": "@Modality@ == 'CT'",
            "target": "pacs",
            "action": "route",
            "action_trigger": "series",
            "disabled": False,
            "fallback": False,
            "priority": "normal",
            "processing_module": "",
            "processing_settings": {},
            "contact": "",
            "tags": "",
        },
        "brain": {
            "rule": "'BRAIN' in @StudyDescription@",
            "target": ["share"],
            "action": "both",
            "action_trigger": "study",
            "study_trigger_condition": "timeout",
            "processing_module": "ai",
            "processing_settings": {"threshold": 0.7},
            "notification_webhook": "https://hooks.example/x",
            "notification_trigger_error": True,
            "notification_email_type": "html",
            "priority": "urgent",
        },
        "offsite": {"rule": "True", "target": "remote", "action": "route"},
    },
}
