"""Fixtures for the reliability suite: the handler helpers of tests/handler, and torch's thread
count given back after a handler's initialize() set it (as a TorchServe worker should)."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# One worker, one torch thread: the suite shares 2 cores with everything else; batches still form
# (8 client threads, batchSize 8).
MODEL_YAML = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 5\nresponseTimeout: 60\n"


def grpc_ports() -> dict:
    """TorchServe always starts its gRPC APIs too, on 7070/7071 unless told otherwise, and
    LocalTorchServe does not move them: free ports, so that two servers (or `make serve`) coexist."""
    from devtools.local_server import free_ports

    inference, management = free_ports(2)
    return {"grpc_inference_port": str(inference), "grpc_management_port": str(management)}


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A real TorchServe (config.properties as shipped, free loopback ports) serving an untrained
    300-item export as seqrec 1.0; `served.export` is the export directory."""
    import shutil

    if shutil.which("java") is None:
        pytest.skip("java not on PATH: TorchServe's frontend needs Java 17 (`make test` installs it)")
    from devtools.local_server import LocalTorchServe, archive
    from handler_fixtures import make_export

    work = tmp_path_factory.mktemp("reliability_torchserve")
    export = make_export(work / "export")
    (work / "model.yaml").write_text(MODEL_YAML)
    archive(export, work / "store", work / "model.yaml")
    with LocalTorchServe(work / "store", ["seqrec=seqrec.mar"], workdir=work / "server",
                         env={"SEQREC_THREADS": "1"}, settings=grpc_ports()) as ts:
        ts.wait_ready()
        ts.export = export
        yield ts
