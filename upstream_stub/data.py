"""Deterministic fake records: the same (seed, id) must give the same bytes in every process,
so cache hits can be checked against a fresh upstream answer."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

Record = dict[str, Any]

_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_FAMILY = ["Martin", "Lefèvre", "Dubois", "Nguyễn", "Moreau", "García", "Müller", "Okafor"]
_GIVEN_F = ["Zoé", "Camille", "Inès", "Léa", "Amira", "Chloé"]
_GIVEN_M = ["Lucas", "Noé", "Mathéo", "Hugo", "Karim", "Jules"]
_CITIES = [("Lyon", "69003"), ("Paris", "75011"), ("Lille", "59000"), ("Nantes", "44000")]
_STREETS = ["rue de la République", "avenue Jean Jaurès", "boulevard Voltaire", "place Bellecour"]
_SPECIALTIES = ["cardiology", "general practice", "dermatology", "paediatrics", "oncology"]
_ORGS = ["CHU Lyon Sud", "Hôpital Saint-Louis", "Clinique du Parc", "Centre de santé Voltaire"]


def _rng(kind: str, rid: int, seed: int) -> random.Random:
    # String seeds hash with SHA-512, so they are stable across processes (unlike hash()).
    return random.Random(f"{seed}:{kind}:{rid}")


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _stamp(rng: random.Random) -> datetime:
    return _EPOCH + timedelta(days=rng.randrange(365), seconds=rng.randrange(86400))


def patient(pid: int, seed: int) -> Record:
    r = _rng("patient", pid, seed)
    female = r.random() < 0.5
    family = r.choice(_FAMILY)
    given = [r.choice(_GIVEN_F if female else _GIVEN_M), r.choice(_GIVEN_F + _GIVEN_M)]
    city, postal = r.choice(_CITIES)
    born = datetime(1930, 1, 1, tzinfo=UTC) + timedelta(days=r.randrange(90 * 365))
    created = _stamp(r)
    return {
        "resourceType": "Patient",
        "id": str(pid),
        "meta": {"versionId": 1, "lastUpdated": _iso(created)},
        "identifier": [
            {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": f"{r.randrange(10**12, 10**13)}"},
            {"system": "https://identity.example/mrn", "value": f"MRN-{pid:012d}"},
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": given}],
        "gender": "female" if female else "male",
        "birthDate": born.date().isoformat(),
        "telecom": [
            {"system": "phone", "value": f"+33 6 {r.randrange(10**8):08d}", "use": "mobile"},
            {"system": "email", "value": f"patient.{pid}@mail.example", "use": "home"},
        ],
        "address": [{
            "use": "home", "line": [f"{r.randrange(1, 200)} {r.choice(_STREETS)}"],
            "city": city, "postalCode": postal, "country": "FR",
        }],
        "gdpr": {
            "consent": r.choice(["granted", "granted", "restricted"]),
            "consent_version": "2024-03",
            "lawful_basis": "GDPR Art. 9(2)(h)",
            "created_at": _iso(created),
            "retention_until": _iso(created + timedelta(days=20 * 365)),
            "data_controller": r.choice(_ORGS),
        },
    }


def professional(pid: int, seed: int) -> Record:
    r = _rng("professional", pid, seed)
    return {
        "id": str(pid),
        "meta": {"versionId": 1, "lastUpdated": _iso(_stamp(r))},
        "name": {"prefix": "Dr", "family": r.choice(_FAMILY), "given": r.choice(_GIVEN_F)},
        "specialty": r.choice(_SPECIALTIES),
        "license_number": f"RPPS-{r.randrange(10**10, 10**11)}",
        "organization": {"id": f"org-{r.randrange(1000)}", "name": r.choice(_ORGS)},
        "active": True,
    }


def dashboard(seed: int) -> Record:
    r = _rng("dashboard", 0, seed)
    return {
        "meta": {"versionId": 1, "lastUpdated": _iso(_stamp(r))},
        "total_patients": r.randrange(100_000, 900_000),
        "active_professionals": r.randrange(500, 5000),
        "consultations_today": r.randrange(100, 3000),
        "pending_consents": r.randrange(0, 500),
        "avg_wait_minutes": round(r.uniform(5, 60), 1),
        "generated_at": _iso(datetime.now(UTC)),
    }


def bump(record: Record, previous: Record) -> Record:
    """Give a written record the next version, one hour later, so Last-Modified moves too."""
    meta = previous["meta"]
    then = datetime.fromisoformat(meta["lastUpdated"]) + timedelta(hours=1)
    return {**record, "meta": {"versionId": meta["versionId"] + 1, "lastUpdated": _iso(then)}}


def http_date(record: Record) -> str:
    return format_datetime(datetime.fromisoformat(record["meta"]["lastUpdated"]), usegmt=True)
