"""Many tasks, one engine: trained prompt runs on a shared backbone packed into one multi-task graph."""
