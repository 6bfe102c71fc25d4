"""Orchestration: the lifecycle's stage table (`lifecycle`), DVC bookkeeping (`dvc_state`), the
command line (`cli`) and its progress output. Prefect flows (`flows/`) and `dvc.yaml` call in here."""
