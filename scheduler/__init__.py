"""The `medq` command line and job planning. Never loads torch or a model."""
