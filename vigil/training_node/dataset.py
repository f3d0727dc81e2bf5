"""The training node's data set: Fisher's Iris, kept encrypted in the platform's secure storage.

Why Iris: it is a real, public-domain data set (Fisher 1936, as distributed by the UCI repository: 150 rows,
four measurements in cm, three species), small enough to ship in the package (``data/iris.csv``, 4.5 KB)
and to train on in well under a second on a CPU, yet not trivially separable (versicolor and virginica
overlap), so "the loss fell below a bound" means the model learned something. No optional dependency
(scikit-learn, numpy) is needed to get it.

Format in storage: the CSV bytes themselves (header ``sepal_length,sepal_width,petal_length,petal_width,
species``, one row per flower). The storage already encrypts every object (envelope encryption under the
container's vault key, chunks authenticated before they are returned), so a compact binary encoding would
save nothing that matters at this size and would hide the data from an operator's ``vigil platform storage
get``. :func:`load` validates every row; a malformed or truncated object is a ``ValueError`` naming the row,
never a silently smaller training set.

:func:`seed` is the operator's step: it makes sure the container exists (created over ``key_name`` when it
is missing) and stores the object as :data:`OBJECT`. Grants are the caller's job (``vigil node seed`` gives
the node principal ``read``/``write`` on the container and ``release`` on the key), because who may read a
data set is a policy decision, not a property of the data.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final

from vigil.platform.errors import NotFoundError
from vigil.platform.storage import ObjectInfo

if TYPE_CHECKING:
    import torch

    from vigil.platform.client import PlatformClient

IRIS_CSV: Final = Path(__file__).resolve().parent / "data" / "iris.csv"
#: the object name of the training set inside its container (under a prefix the shipped rules' list
#: ``dataset_prefixes`` names, so the demo nodes' reads are not "outside their dataset")
OBJECT: Final = "datasets/iris/train.csv"
HEADER: Final = "sepal_length,sepal_width,petal_length,petal_width,species"
CLASSES: Final = ("setosa", "versicolor", "virginica")
FEATURES: Final = 4
#: a data set is tiny; anything larger is not ours (and is not parsed)
MAX_BYTES: Final = 1 << 20


def encode(path: Path = IRIS_CSV) -> bytes:
    """The bytes stored for the data set at ``path`` (checked with :func:`load` first)."""
    data = path.read_bytes()
    load(data)
    return data


def load(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float32, ``[N, 4]``) and labels (int64, ``[N]``, indexes into :data:`CLASSES`).

    ValueError for anything that is not the documented CSV, naming the first bad row.
    """
    with warnings.catch_warnings():  # torch warns at import when numpy is absent; nothing here uses it
        warnings.filterwarnings("ignore", message=".*NumPy.*")
        import torch  # noqa: PLC0415  (seeding, in the daemon, must not pull in torch)

    if len(data) > MAX_BYTES:
        raise ValueError(f"data set is {len(data)} bytes, more than {MAX_BYTES}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("data set is not ASCII CSV") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != HEADER:
        raise ValueError(f"data set header: expected {HEADER!r}")
    features: list[list[float]] = []
    labels: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != FEATURES + 1 or cells[-1] not in CLASSES:
            raise ValueError(f"data set row {number}: expected 4 numbers and a species")
        try:
            row = [float(c) for c in cells[:FEATURES]]
        except ValueError:
            raise ValueError(f"data set row {number}: a measurement is not a number") from None
        if not all(0.0 < v < 100.0 for v in row):
            raise ValueError(f"data set row {number}: a measurement is out of range")
        features.append(row)
        labels.append(CLASSES.index(cells[-1]))
    if not features:
        raise ValueError("data set has no rows")
    return torch.tensor(features, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


async def seed(
    client: PlatformClient, principal: str, container: str, key_name: str, *, path: Path = IRIS_CSV
) -> ObjectInfo:
    """Store the data set as :data:`OBJECT` in ``container`` (created over ``key_name`` if missing).

    ``principal`` needs ``create`` on the key's container side and ``write`` on the container (an admin
    such as ``vigil``); the key must already exist. Replaces an earlier copy, so seeding twice is safe.
    """
    data = encode(path)
    try:
        await client.storage.get_container(principal, container)
    except NotFoundError:
        await client.storage.create_container(principal, container, key_name=key_name)
    return await client.storage.put(
        principal, container, OBJECT, data, metadata={"format": "csv", "dataset": "iris"}
    )
