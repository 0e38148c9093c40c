"""What `planet run` checks before anything starts (no server, no folder, no flow run): the
things a run would otherwise find out minutes in, each as one line naming the setting and
what to do. The settings' own values are checked when they are read (flows/options.py)."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from flows.config import PipelineConfig

KAGGLE_STAGES = ("prepare", "submit")  # the stages that call Kaggle (list/download, submit)
MODEL_STAGES = ("train", "predict", "thresholds")  # the stages that put tensors on a device
CONNECT_TIMEOUT_S = 3.0
DASK_SCHEMES = {"tcp": 8786, "tls": 8786}


class PreflightError(ValueError):
    """A setting a run cannot start with; the message says which and what to do."""


def check_credentials(*, api_ready: bool = False) -> None:
    """The Kaggle credentials the run would use exist and can be read (KaggleCredentialsError
    names the places looked in). A Prefect Secret block (tasks/credentials.py) can only be
    read once the Prefect API is up: before that (`api_ready` False), when there is a Prefect
    database the block could be in (PREFECT_API_URL's server, or a local home that has one),
    missing machine-local credentials are left to the second call, made right after the API
    is up; with neither, there is no block to read and the error comes at once."""
    from planet.kaggle import KaggleCredentialsError, load_credentials
    from tasks.credentials import kaggle_credentials, secret_block_name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run itself warns about a readable kaggle.json
        try:
            load_credentials()
        except KaggleCredentialsError:
            if secret_block_name() is None or not (api_ready or _prefect_database()):
                raise
            if api_ready:
                kaggle_credentials()  # the Secret block too; its error names every place


def _prefect_database() -> bool:
    """Whether there is a Prefect database that could hold a Secret block."""
    from flows.console import DEFAULT_HOME

    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME", DEFAULT_HOME)).expanduser()
    return (home / "prefect.db").is_file()


def check_device(device: str) -> None:
    """`--device` names a device this machine has (auto and cpu always do)."""
    if device in ("auto", "cpu"):
        return
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PreflightError(
                f"--device {device}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}): use "
                "--device cpu, or auto to use CUDA only where there is one"
            )
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise PreflightError(
                f"--device {device}: this machine has {count} CUDA device(s), cuda:0.."
                f"cuda:{count - 1}"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise PreflightError(f"--device {device}: MPS is not available here: use --device cpu")


def check_dask_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Something listens at `--dask-address` (a TCP connect, `timeout` seconds at most)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in DASK_SCHEMES:
        return  # inproc://, ucx://...: left to Dask
    host, port = parts.hostname or "", parts.port or DASK_SCHEMES[parts.scheme]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PreflightError(
            f"--dask-address {address}: no Dask scheduler answers at {host}:{port} ({reason}, "
            f"{timeout:g} s): start one there (`dask scheduler`), or leave --dask-address "
            "empty for a local cluster"
        ) from None


def check_run(
    config: PipelineConfig, stages: Iterable[str] | None = None, *, api_ready: bool = False
) -> None:
    """Everything above that `stages` (default: the config's) need; with `api_ready`, only
    what needed the Prefect API (the Kaggle credentials' Secret block)."""
    run = set(config.stages if stages is None else stages)
    if api_ready:
        if run & set(KAGGLE_STAGES):
            check_credentials(api_ready=True)
        return
    if run & set(MODEL_STAGES):
        check_device(config.compute.device)
    if "resize" in run and config.resize.dask_address:
        check_dask_address(config.resize.dask_address)
    if run & set(KAGGLE_STAGES):
        check_credentials()
