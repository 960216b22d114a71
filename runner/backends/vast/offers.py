"""vast.ai's market as a spec sees it: the offer query it asks for, and which offer to take.

Pure functions over plain data: offers are the dicts `vastai search offers --raw` returns
(id, gpu_name, num_gpus, dph_total, min_bid, reliability, disk_space, cuda_max_good, ...),
so tests hand in offer lists as data. Query terms are vast.ai's `search offers` syntax, in
which an underscore stands for a space in a value (gpu_name=RTX_4090).
"""

from __future__ import annotations

import math

from runner.errors import bad_input
from runner.gpus import GpuRequest
from runner.spec.model import JobSpec

ON_DEMAND, INTERRUPTIBLE = "on-demand", "bid"
# An interruptible instance runs while its bid is the host's highest: bid a little above the
# lowest accepted one, so a slightly higher bidder does not pause it at once.
BID_MARGIN = 1.10
RUN_GRACE_MINUTES = 10  # past timeout_minutes: data download and the final checkpoint (vast/backend.py)


def vast_gpu(spec: JobSpec) -> GpuRequest:
    """resources.gpu, which vast.ai needs: exit 2 without one."""
    request = spec.resources.gpu_request
    if request is None:
        raise bad_input("resources.gpu: backend vast rents GPUs; give a type and count, e.g. RTX4090:1")
    return request


def vast_gpu_names(spec: JobSpec) -> tuple[str, ...]:
    """resources.gpu's names on vast.ai, from the GPU catalog; exit 2 for a card the image
    cannot run on (its torch has no kernels for it), before anything is rented."""
    request = vast_gpu(spec)
    try:
        names = request.names_on("vast")
    except ValueError as err:
        raise bad_input(f"resources.gpu: {err}") from None
    if not request.runs_the_image():
        raise bad_input(request.image_refusal())
    return names


def min_gpu_ram_gb(spec: JobSpec) -> float:
    """Each GPU's memory must be the catalog's, give or take what drivers keep (an A100-80GB
    request must not be served by the cheaper 40 GB card of the same name)."""
    return round(vast_gpu(spec).type.memory_gb * 0.9, 1)


def min_duration_days(spec: JobSpec) -> float:
    """A host whose contract ends before the job (and its start-up) would can stop it mid-run."""
    minutes = spec.resources.timeout_minutes + spec.vast.startup_minutes + RUN_GRACE_MINUTES
    return round(minutes / (24 * 60), 4)


def offer_type(spec: JobSpec) -> str:
    return INTERRUPTIBLE if spec.vast.interruptible else ON_DEMAND


def order_by(spec: JobSpec) -> str:
    """What the search sorts by: what the choice is made on (an interruptible offer's lowest bid)."""
    return "min_bid" if spec.vast.interruptible else "dph_total"


def price(offer: dict, interruptible: bool) -> float | None:
    """US$ per hour for the whole instance: the on-demand price, or the lowest bid accepted."""
    value = offer.get("min_bid" if interruptible else "dph_total")
    return float(value) if value is not None else None


def _chosen_price(offer: dict, interruptible: bool) -> float:
    """The price of an offer that was chosen: choose_offer takes only those with one (fits)."""
    cost = price(offer, interruptible)
    assert cost is not None, f"offer #{offer.get('id')} has no price and cannot have been chosen"
    return cost


def storage_per_hour(offer: dict, disk_gb: float) -> float:
    """An interruptible instance's disk is billed on top of the bid (storage_cost is $/GB/month)."""
    return float(offer.get("storage_cost") or 0.0) * disk_gb / (30 * 24)


def reliability(offer: dict) -> float:
    return float(offer.get("reliability", offer.get("reliability2")) or 0.0)


def offer_query(spec: JobSpec) -> str:
    """The `vastai search offers` query for the spec's GPUs, price cap and host requirements."""
    v = spec.vast
    names = [name.replace(" ", "_") for name in vast_gpu_names(spec)]
    gpu = f"gpu_name={names[0]}" if len(names) == 1 else f"gpu_name in [{','.join(names)}]"
    terms = [gpu, f"num_gpus={vast_gpu(spec).count}", f"gpu_ram>={min_gpu_ram_gb(spec)}",
             f"reliability>={v.min_reliability}", f"disk_space>={v.disk_gb}", f"cuda_max_good>={v.min_cuda}",
             f"duration>={min_duration_days(spec)}", "rentable=true", "verified=true"]
    if v.max_dollars_per_hour is not None:
        terms.append(f"{'min_bid' if v.interruptible else 'dph_total'}<={v.max_dollars_per_hour}")
    return " ".join(terms + ([v.extra_filters.strip()] if v.extra_filters.strip() else []))


def fits(offer: dict, spec: JobSpec) -> bool:
    """Whether an offer meets the spec, checked again here: the query is only what we asked for."""
    v = spec.vast
    cost = price(offer, v.interruptible)
    duration = offer.get("duration")
    return (offer.get("gpu_name") in vast_gpu_names(spec)
            and offer.get("num_gpus") == vast_gpu(spec).count
            and float(offer.get("gpu_ram") or 0) >= min_gpu_ram_gb(spec) * 1000  # offers give MB
            and offer.get("rentable", True) is not False
            and reliability(offer) >= v.min_reliability
            and float(offer.get("disk_space") or 0) >= v.disk_gb
            and float(offer.get("cuda_max_good") or 0) >= v.min_cuda
            and (duration is None or float(duration) >= min_duration_days(spec) * 24 * 3600)  # seconds
            and cost is not None
            and (v.max_dollars_per_hour is None or cost <= v.max_dollars_per_hour))


def choose_offer(offers: list[dict], spec: JobSpec) -> dict | None:
    """The cheapest offer that fits (the same GPUs run the job at the same speed anywhere);
    among equal prices the more reliable host. None when nothing fits."""
    interruptible = spec.vast.interruptible
    fitting = [offer for offer in offers if fits(offer, spec)]
    return min(fitting, key=lambda o: (price(o, interruptible), -reliability(o), o.get("id", 0)), default=None)


def bid_price(offer: dict, spec: JobSpec) -> float | None:
    """What to bid for an interruptible instance (None for on-demand), rounded up to a tenth of a
    cent, never above vast.max_dollars_per_hour."""
    return _bid(offer, spec) if spec.vast.interruptible else None


def _bid(offer: dict, spec: JobSpec) -> float:
    # Rounded to a millionth first: 0.4 x 1.10 is 0.44000000000000006 in binary, which a bare
    # ceil would make a bid of 0.441.
    bid = math.ceil(round(_chosen_price(offer, True) * BID_MARGIN * 1000, 6)) / 1000
    cap = spec.vast.max_dollars_per_hour
    return min(bid, cap) if cap is not None else bid


def hourly_cost(offer: dict, spec: JobSpec) -> float:
    """What the instance costs an hour: on-demand's dph_total (disk included), or the bid plus
    the disk, which vast.ai bills apart for interruptible instances."""
    if spec.vast.interruptible:
        return _bid(offer, spec) + storage_per_hour(offer, spec.vast.disk_gb)
    return _chosen_price(offer, False)


def describe_offer(offer: dict, spec: JobSpec) -> str:
    where = offer.get("geolocation") or "unknown location"
    return (f"#{offer.get('id')}: {offer.get('num_gpus')}x {offer.get('gpu_name')} in {where}, "
            f"reliability {reliability(offer):.3f}, driver CUDA {offer.get('cuda_max_good')}, "
            f"{float(offer.get('disk_space') or 0):.0f} GB disk free")


def describe_price(offer: dict, spec: JobSpec) -> str:
    if spec.vast.interruptible:
        disk = storage_per_hour(offer, spec.vast.disk_gb)
        return (f"bid ${bid_price(offer, spec):.3f}/hour + ${disk:.3f}/hour for {spec.vast.disk_gb} GB disk, "
                f"interruptible (lowest accepted bid ${price(offer, True):.3f}; on-demand "
                f"${float(offer.get('dph_total') or 0):.3f})")
    return f"${price(offer, False):.3f}/hour on-demand, {spec.vast.disk_gb} GB disk included"
