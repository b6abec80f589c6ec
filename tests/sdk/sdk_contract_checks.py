"""SDK checks that run against any server speaking the seqrec contract: the fake one here
(test_sdk_contract.py) and, for the integration suite, a real TorchServe.

For TorchServe, with two versions registered and token authorization on:

    from sdk_contract_checks import (check_variants_land_on_their_versions,
                                     check_rotated_key_recovered, check_fallback_when_server_stops)
    check_variants_land_on_their_versions(inference_url, ("1.0", "2.0"), token_file=key_file)
    check_rotated_key_recovered(inference_url, key_file,
        rotate=lambda: requests.get(f"{management_url}/token?type=inference",
                                    headers={"Authorization": f"Bearer {api_key}"}).raise_for_status())
    check_fallback_when_server_stops(inference_url, stop=stop_torchserve, token_file=key_file)

(TorchServe rewrites key_file.json itself when a key is rotated.) Each function raises
AssertionError with a message on failure and returns what it measured.
"""

from typing import Callable, Dict, Optional, Sequence

from seqrec_sdk import Client, Experiment, SeqrecError, Variant


def check_variants_land_on_their_versions(base_url: str, versions: Sequence[str], *,
                                          token_file: Optional[str] = None,
                                          model: str = "seqrec", users: int = 200) -> Dict[str, int]:
    """An even experiment over ``versions``: every answer must come from its variant's version
    (the response's model_version), and every variant must get traffic."""
    exp = Experiment("contract-check", [Variant(f"v{i}", v) for i, v in enumerate(versions)])
    exposures = []
    per_variant: Dict[str, int] = {}
    with Client(base_url, model, token_file=token_file, experiments=[exp],
                on_exposure=exposures.append, retries=2) as client:
        for i in range(users):
            uid = f"contract-user-{i}"
            recs = client.recommend([1, 2, 3], k=5, user_id=uid)
            variant = exp.assign(uid)
            assert recs.variant == variant.name, (uid, recs.variant, variant)
            assert recs.model_version == variant.model_version, (
                f"{uid}: variant {variant.name} asked version {variant.model_version}, "
                f"server answered {recs.model_version}")
            per_variant[variant.name] = per_variant.get(variant.name, 0) + 1
    assert len(per_variant) == len(versions), f"a variant got no traffic: {per_variant}"
    assert len(exposures) == users, f"{len(exposures)} exposures for {users} answers"
    return per_variant


def check_rotated_key_recovered(base_url: str, token_file: str, rotate: Callable[[], None], *,
                                model: str = "seqrec") -> int:
    """After ``rotate()`` (the server refuses the old key and token_file holds the new one),
    the next call succeeds after one re-read of the file."""
    with Client(base_url, model, token_file=token_file) as client:
        client.recommend([1, 2], k=3)
        rotate()
        recs = client.recommend([1, 2], k=3)
        reloads = client.stats.token_reloads
    assert recs.items is not None and not recs.fallback
    assert reloads == 1, f"expected one token re-read, saw {reloads}"
    return reloads


def check_fallback_when_server_stops(base_url: str, stop: Callable[[], None], *,
                                     token_file: Optional[str] = None, model: str = "seqrec",
                                     calls_after_stop: int = 20) -> int:
    """With a fallback configured, stopping the server mid-run gives fallbacks, never
    exceptions."""
    popular = list(range(1, 51))
    with Client(base_url, model, token_file=token_file, fallback=popular, retries=1,
                timeout=(0.5, 2.0)) as client:
        for _ in range(5):
            assert not client.recommend([1, 2], k=5).fallback
        stop()
        for _ in range(calls_after_stop):
            try:
                recs = client.recommend([1, 2], k=5)
            except SeqrecError as e:  # pragma: no cover - the failure this check exists for
                raise AssertionError(f"server stopped: expected a fallback, got {e!r}") from e
            assert recs.fallback and len(recs.items) == 5, recs
        fallbacks = client.stats.fallbacks
    assert fallbacks == calls_after_stop
    return fallbacks
