"""What gpujob asks vast.ai for, kept as it was sent (job/request.json): the offer to rent and the
instance to make of it, as `VastAI.create_instance`'s keyword arguments.

The instance runs the image in vast.ai's "args" launch mode with `gpujob-vast-start` (the image's
copy of images/vast-start.sh) as its entrypoint; the spec and the run folder's name travel in its
environment. `gpujob resume` sends the recorded request again with only what must be new: an offer
(the old one is rented or gone) with its bid, and the instance told to wait for the run folder.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from runner.backends.vast.offers import bid_price
from runner.spec.model import JobSpec
from runner.usercode.shipping import code_fields

ENTRYPOINT = "gpujob-vast-start"
WAIT_FOR_UPLOAD = "GPUJOB_WAIT_FOR_UPLOAD"  # vast-start.sh waits for the upload's mark before the job starts


@dataclass(frozen=True)
class VastRequest:
    """The offer to rent and the instance to ask for (VastAI.create_instance's keyword arguments)."""

    offer: dict
    payload: dict
    sends_run_folder: bool = False  # the run folder (its checkpoint) goes to the instance first: a resume

    @property
    def label(self) -> str:
        """`gpujob RUN`: how vast.ai finds the instance without its id."""
        return self.payload["label"]

    @property
    def waits_for_upload(self) -> bool:
        """The job starts once something is sent to the instance: the user's code, the run folder."""
        return self.payload["env"].get(WAIT_FOR_UPLOAD) == "1"

    def to_json(self) -> dict:
        return {"offer": self.offer, "payload": self.payload, "sends_run_folder": self.sends_run_folder}

    @classmethod
    def from_json(cls, data: dict) -> "VastRequest":
        offer, payload, sends = data["offer"], data["payload"], data["sends_run_folder"]
        if not (isinstance(offer, dict) and "id" in offer and isinstance(payload, dict)
                and isinstance(payload.get("env"), dict) and "label" in payload and isinstance(sends, bool)):
            raise ValueError("not a vast.ai request (offer, payload with env and label, sends_run_folder)")
        return cls(offer, payload, sends)

    def on_offer(self, offer: dict, spec: JobSpec) -> "VastRequest":
        """The same instance asked of another offer, with its bid, waiting for the run folder:
        what `resume` sends. The recorded request is left as it was."""
        env = {**self.payload["env"], WAIT_FOR_UPLOAD: "1"}
        return VastRequest(offer, {**self.payload, "env": env, "bid_price": bid_price(offer, spec)},
                           sends_run_folder=True)


def instance_request(spec: JobSpec, run_name: str, offer: dict) -> dict:
    """Keyword arguments for vastai's `VastAI.create_instance` (`vastai create instance`)."""
    # The user's code is sent once the instance runs: the job waits for it (vast-start.sh).
    wait = {WAIT_FOR_UPLOAD: "1"} if code_fields(spec) else {}
    return {
        "image": spec.vast.image,
        "disk": spec.vast.disk_gb,
        "label": f"gpujob {run_name}",
        "env": {"GPUJOB_SPEC_B64": base64.b64encode(spec.to_yaml().encode()).decode(), "GPUJOB_RUN_NAME": run_name,
                "GPUJOB_INNER_RUN": "1", **wait},
        # The args launch mode runs the image as it is (ssh/jupyter modes replace its entrypoint);
        # in it `onstart` is the entrypoint, as with the CLI's --entrypoint.
        "runtype": "args",
        "onstart_cmd": ENTRYPOINT,
        "cancel_unavail": True,  # fail now rather than leave a stopped instance behind
        "bid_price": bid_price(offer, spec),  # None: on-demand
    }
