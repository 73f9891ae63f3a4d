"""Stub configuration, read from ``STUB_*`` environment variables so harnesses need no flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ValueError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class StubSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    pg_delay_ms: float = 0.0
    fhir_delay_ms: float = 0.0
    error_rate: float = 0.0
    seed: int = 0
    test_hooks: bool = True

    def __post_init__(self) -> None:
        # Fail at startup rather than producing a silently wrong benchmark.
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within 0..1, got {self.error_rate}")
        if self.pg_delay_ms < 0 or self.fhir_delay_ms < 0:
            raise ValueError("delays must be >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StubSettings:
        d = cls()
        return cls(
            host=env.get("STUB_HOST", d.host),
            port=int(env.get("STUB_PORT", d.port)),
            pg_delay_ms=float(env.get("STUB_PG_DELAY_MS", d.pg_delay_ms)),
            fhir_delay_ms=float(env.get("STUB_FHIR_DELAY_MS", d.fhir_delay_ms)),
            error_rate=float(env.get("STUB_ERROR_RATE", d.error_rate)),
            seed=int(env.get("STUB_SEED", d.seed)),
            test_hooks=_parse_bool("STUB_TEST_HOOKS", env.get("STUB_TEST_HOOKS", "true")),
        )
