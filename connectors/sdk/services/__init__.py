"""HubClient's operations, one module per hub service (HubClient composes them)."""
