"""vast.ai, stood in for by this machine: VastApi's methods, where an instance is the image's own
start script (images/vast-start.sh) run as a process, its disk a folder, `stop` the SIGTERM that
`docker stop` sends the container's first process, and `copy` the folder copy rsync would make."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


class LocalVast:
    def __init__(self, root: Path, offers: list[dict]):
        self.root, self.offers = root, offers
        self.instances: dict[int, dict] = {}
        self.calls: list[tuple] = []

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def _disk(self, instance_id: int, remote: str) -> Path:
        return self.instances[instance_id]["disk"] / remote.lstrip("/")

    def search_offers(self, query, offer_type, disk_gb, order):
        self.calls.append(("search", query))
        return self.offers

    def check_can_copy(self):
        self.calls.append(("check copy",))

    def create_instance(self, offer_id, request):
        instance_id = 101 + len(self.instances)
        self.calls.append(("create", offer_id, instance_id))
        disk = self.root / f"instance-{instance_id}"
        (disk / "workspace").mkdir(parents=True)
        env = {**os.environ, **request["env"], "HOME": str(disk), "PYTHONUNBUFFERED": "1",
               "GPUJOB_RUNS_DIR": str(disk / "workspace" / "runs"), "GPUJOB_JOB_DIR": str(disk / "workspace" / "job"),
               "GPUJOB_UPLOAD_WAIT_S": "120",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the image's gpujob
        with open(disk / "container.log", "wb") as log:
            proc = subprocess.Popen(["bash", str(REPO / "images" / "vast-start.sh")], env=env, cwd=disk,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.instances[instance_id] = {"proc": proc, "disk": disk, "label": request["label"], "destroyed": False}
        return instance_id

    def instances_labelled(self, label):
        return [i for i, inst in self.instances.items() if inst["label"] == label and not inst["destroyed"]]

    def show_instance(self, instance_id):
        self.calls.append(("show", instance_id))
        inst = self.instances.get(instance_id)
        if inst is None or inst["destroyed"]:
            return {}
        return {"actual_status": "running" if inst["proc"].poll() is None else "exited", "status_msg": ""}

    def logs(self, instance_id):
        inst = self.instances[instance_id]
        return "" if inst["destroyed"] else (inst["disk"] / "container.log").read_text(errors="replace")

    def stop_instance(self, instance_id):
        self.calls.append(("stop", instance_id))
        inst = self.instances[instance_id]
        if inst["proc"].poll() is None:
            inst["proc"].send_signal(signal.SIGTERM)  # to the container's first process, as docker stop does

    def copy_back(self, instance_id, remote_dir, local_dir, exclude=()):
        self.calls.append(("copy", instance_id, remote_dir))
        _copy(self._disk(instance_id, remote_dir), Path(local_dir), exclude)

    def copy_to(self, instance_id, local_path, remote_path, exclude=()):
        self.calls.append(("upload", instance_id, remote_path))
        target = self._disk(instance_id, remote_path)
        if Path(local_path).is_dir():
            _copy(Path(local_path), target, exclude)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_path, target)

    def destroy_instance(self, instance_id):
        self.calls.append(("destroy", instance_id))
        inst = self.instances[instance_id]
        if inst["proc"].poll() is None:
            os.killpg(inst["proc"].pid, signal.SIGKILL)
            inst["proc"].wait()
        inst["destroyed"] = True

    def wait_all(self):
        for inst in self.instances.values():
            inst["proc"].wait(timeout=300)


def _copy(source: Path, target: Path, exclude) -> None:
    """rsync -a SOURCE/ TARGET/ --exclude=/NAME...: what is there, over what is here."""
    target.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        raise AssertionError(f"rsync: {source} does not exist on the instance")
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if relative.parts[0] in exclude or path.is_dir():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)
