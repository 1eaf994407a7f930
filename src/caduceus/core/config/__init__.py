"""The orchestrator's configuration: rules, targets, modules, settings; validated, versioned."""
