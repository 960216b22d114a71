"""cost.json: what a run on rented GPUs cost, beside its summary.json.

An estimate, not the provider's invoice: a price per hour times the seconds billed, with where
the price came from and what the time covers, so a user can compare it with the bill. Written
by the backends that rent (modal, vast); runs on the user's own hardware have none.
"""

from __future__ import annotations

from pathlib import Path

COST = "cost.json"


def estimate(backend: str, what: str, price_per_hour: float, billed_s: float, basis: str) -> dict:
    return {"backend": backend, "rented": what, "price_per_hour_usd": round(price_per_hour, 4),
            "billed_s": round(billed_s, 1), "estimated_usd": round(price_per_hour * billed_s / 3600, 4),
            "basis": basis}


def write_cost(folder: Path, record: dict) -> None:
    """cost.json, with the estimate the run's record kept from before it started beside it."""
    from runner.runs import record as run_record
    from runner.errors import GpujobError
    from runner.runs.folder import RunFolder

    try:
        expected = run_record.read(folder).estimate if run_record.is_run(folder) else None
    except GpujobError:  # a damaged record costs the comparison, never the cost itself
        expected = None
    if expected:
        record = {**record, "estimated_before_run": _priced(expected, record)}

    RunFolder(folder).write_json(COST, record)


def describe(record: dict) -> str:
    return (f"cost: about ${record['estimated_usd']:.2f} ({record['rented']} at ${record['price_per_hour_usd']:.2f}/h "
            f"for {record['billed_s'] / 60:.1f} min)")


def _priced(expected: dict, record: dict) -> dict:
    """A market-priced estimate (vast.ai) is priced here, at the price the run was rented for."""
    if expected.get("total_usd") is None and expected.get("total_s") is not None:
        return {**expected, "usd_per_hour": record["price_per_hour_usd"],
                "total_usd": round(record["price_per_hour_usd"] * expected["total_s"] / 3600, 4),
                "price_source": "the rented offer's price"}
    return expected
