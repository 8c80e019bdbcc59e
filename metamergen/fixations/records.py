"""Fixations and scanpaths: the viewer data MetamerGen conditions on.

Coordinate frame
----------------
A fixation is ``(x, y)`` in **pixels of the image file it refers to** (not of the 448-px encoder
input, not of a padded display frame):

- origin at the top-left corner of the image, ``x`` grows to the right, ``y`` grows downwards;
- continuous: pixel ``i`` covers ``[i, i + 1)``, so the centre of the top-left pixel is
  ``(0.5, 0.5)``;
- a fixation is *on the image* when ``0 <= x < width`` and ``0 <= y < height``.

Times are in milliseconds: ``duration_ms`` is how long the fixation lasted, ``onset_ms`` when it
started (relative to whatever the dataset counts from, usually stimulus onset). Both are optional.

Fixations outside the image occur in real recordings. They are never an error when a
:class:`Fixation` is built; a :class:`Scanpath` built through :meth:`Scanpath.from_xy`,
:meth:`Scanpath.from_points` or :meth:`Scanpath.from_dict` applies an :data:`OffImagePolicy`
(``"drop"`` by default, with a warning that says how many were dropped). Nothing here rescales
coordinates: converters from other frames must do that explicitly.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "OffImagePolicy",
    "Fixation",
    "Scanpath",
    "random_fixations",
    "matched_random",
]

OffImagePolicy = Literal["drop", "clip", "error"]
"""What to do with fixations outside ``[0, width) x [0, height)``.

``"drop"`` removes them (and warns), ``"clip"`` moves each to the nearest on-image point (and
warns), ``"error"`` raises :class:`ValueError`.
"""

_POLICIES: tuple[str, ...] = ("drop", "clip", "error")
_METADATA_FIELDS: tuple[str, ...] = ("id", "image", "subject", "task", "condition")
_RECORD_KEYS: tuple[str, ...] = (
    "id",
    "image",
    "width",
    "height",
    "subject",
    "task",
    "condition",
    "fixations",
    "extra",
)
_FIXATION_KEYS: tuple[str, ...] = ("x", "y", "duration_ms", "onset_ms")
_MAX_LISTED = 5  # offending fixations shown in an off_image="error" message


def _real(value: Any, name: str) -> float:
    """Return ``value`` as a finite float, or raise saying what is wrong with it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}; "
            "pass a float or int (pixels for x/y, milliseconds for times)."
        )
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(
            f"{name} must be finite, got {out!r}; remove or repair this fixation before "
            "building the scanpath (missing samples are often recorded as NaN)."
        )
    return out


def _size(value: Any, name: str) -> int:
    """Return an image side length in pixels as a positive int, or raise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive integer number of pixels, got {type(value).__name__} {value!r}.")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(float(value)) and float(value).is_integer()):
            raise ValueError(
                f"{name} must be a whole number of pixels, got {value!r}; pass the size of the "
                "image file the fixations refer to."
            )
    out = int(value)
    if out <= 0:
        raise ValueError(f"{name} must be > 0 pixels, got {out}.")
    return out


def _same_kind(err: Exception, message: str) -> Exception:
    """A TypeError or ValueError (matching ``err``) carrying ``message``."""
    return TypeError(message) if isinstance(err, TypeError) else ValueError(message)


def _check_policy(policy: Any) -> None:
    if policy not in _POLICIES:
        raise ValueError(f"off_image must be one of {_POLICIES}, got {policy!r}.")


@dataclass(frozen=True)
class Fixation:
    """One fixation in the pixel frame of its image (see the module docstring).

    Parameters
    ----------
    x, y : float
        Position in pixels of the referenced image file; origin top-left, x right, y down,
        pixel ``i`` covering ``[i, i + 1)``. Must be finite. Values outside the image are allowed
        here; :class:`Scanpath` handles them with an :data:`OffImagePolicy`.
    duration_ms : float or None
        Fixation duration in milliseconds, finite and ``>= 0``.
    onset_ms : float or None
        Fixation onset in milliseconds, finite and ``>= 0``.

    Raises
    ------
    TypeError
        If a value is not a real number (``bool`` and ``str`` are rejected).
    ValueError
        If a value is NaN or infinite, or a time is negative.
    """

    x: float
    y: float
    duration_ms: float | None = None
    onset_ms: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _real(self.x, "Fixation.x"))
        object.__setattr__(self, "y", _real(self.y, "Fixation.y"))
        for name in ("duration_ms", "onset_ms"):
            value = getattr(self, name)
            if value is None:
                continue
            value = _real(value, f"Fixation.{name}")
            if value < 0:
                raise ValueError(f"Fixation.{name} must be >= 0 ms, got {value!r}.")
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, float]:
        """Return ``{"x", "y", "duration_ms", "onset_ms"}`` as plain floats, omitting ``None``."""
        out = {"x": self.x, "y": self.y}
        if self.duration_ms is not None:
            out["duration_ms"] = self.duration_ms
        if self.onset_ms is not None:
            out["onset_ms"] = self.onset_ms
        return out


def _json_plain(value: Any, where: str) -> Any:
    """Convert numpy scalars/arrays and tuples to JSON types; raise naming ``where`` otherwise."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}, which JSON cannot represent.")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has non-string key {key!r}; JSON keys must be str.")
            out[key] = _json_plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON-serialisable; store str, int, "
        "float, bool, None, lists or str-keyed dicts in Scanpath.extra."
    )


@dataclass(frozen=True)
class Scanpath:
    """An ordered sequence of fixations on one image, with its metadata.

    Parameters
    ----------
    fixations : tuple of Fixation
        In viewing order. Any iterable of :class:`Fixation` is accepted and stored as a tuple.
        The constructor keeps off-image fixations as given; the ``from_*`` constructors apply an
        :data:`OffImagePolicy`.
    width, height : int
        Size in pixels of the image file the coordinates refer to; positive. Integral floats such
        as ``1680.0`` are accepted and converted to ``int``.
    image : str or None
        Image reference (file name or path relative to an image root).
    id, subject, task, condition : str or None
        Identifiers of the scanpath, the viewer, the task and the experimental condition.
    extra : Mapping
        Further str-keyed, JSON-serialisable fields (copied into a new dict).

    Notes
    -----
    ``extra`` is a plain dict, so a :class:`Scanpath` compares by value but is not hashable.
    """

    fixations: tuple[Fixation, ...]
    width: int
    height: int
    image: str | None = None
    id: str | None = None
    subject: str | None = None
    task: str | None = None
    condition: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", _size(self.width, "Scanpath.width"))
        object.__setattr__(self, "height", _size(self.height, "Scanpath.height"))
        for name in _METADATA_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"Scanpath.{name} must be a str or None, got {type(value).__name__} "
                    f"{value!r}; convert it with str() first."
                )
        fixations = self.fixations
        if isinstance(fixations, (Fixation, str, bytes, Mapping)):
            raise TypeError(
                "Scanpath.fixations must be a sequence of Fixation objects, got "
                f"{type(fixations).__name__}; use Scanpath.from_xy / from_points / from_dict to "
                "build one from numbers."
            )
        fixations = tuple(fixations)
        for i, fixation in enumerate(fixations):
            if not isinstance(fixation, Fixation):
                raise TypeError(
                    f"Scanpath.fixations[{i}] is a {type(fixation).__name__}, not a Fixation; "
                    "use Scanpath.from_xy / from_points / from_dict to build one from numbers."
                )
        object.__setattr__(self, "fixations", fixations)
        if self.extra is None:
            object.__setattr__(self, "extra", {})
        if not isinstance(self.extra, Mapping):
            raise TypeError(f"Scanpath.extra must be a mapping, got {type(self.extra).__name__}.")
        for key in self.extra:
            if not isinstance(key, str):
                raise TypeError(f"Scanpath.extra keys must be str, got {key!r}.")
        object.__setattr__(self, "extra", dict(self.extra))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_xy(
        cls,
        x: Sequence[float],
        y: Sequence[float],
        *,
        width: int,
        height: int,
        duration_ms: Sequence[float] | None = None,
        onset_ms: Sequence[float] | None = None,
        off_image: OffImagePolicy = "drop",
        **metadata: Any,
    ) -> Scanpath:
        """Build a scanpath from parallel coordinate (and optional time) sequences.

        Parameters
        ----------
        x, y : sequence of float
            Fixation positions in pixels of the referenced image (frame in the module docstring).
        width, height : int
            Image size in pixels.
        duration_ms, onset_ms : sequence of float, optional
            Per-fixation times in milliseconds; same length as ``x``.
        off_image : {"drop", "clip", "error"}
            Policy for fixations outside the image, see :meth:`with_off_image`.
        **metadata
            ``image``, ``id``, ``subject``, ``task``, ``condition``, ``extra``.

        Raises
        ------
        ValueError
            If the sequences have different lengths, or a value is invalid (the message names the
            fixation index).
        TypeError
            If a value is not a number (the message names the fixation index).
        """
        _check_policy(off_image)
        if x is None or y is None:
            raise TypeError("from_xy needs both x and y sequences (pixels); got None.")
        columns = {"x": x, "y": y, "duration_ms": duration_ms, "onset_ms": onset_ms}
        lengths = {}
        for name, column in columns.items():
            if column is None:
                continue
            if isinstance(column, (str, bytes)) or not hasattr(column, "__len__"):
                raise TypeError(f"{name} must be a sequence of numbers, got {type(column).__name__} {column!r}.")
            lengths[name] = len(column)
        if len(set(lengths.values())) > 1:
            described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
            raise ValueError(f"from_xy needs one value per fixation in every sequence, but {described}.")
        fixations = []
        for i in range(lengths["x"]):
            try:
                fixations.append(
                    Fixation(
                        x[i],
                        y[i],
                        None if duration_ms is None else duration_ms[i],
                        None if onset_ms is None else onset_ms[i],
                    )
                )
            except (TypeError, ValueError) as err:
                raise _same_kind(err, f"fixation {i}: {err}") from None
        scanpath = cls(tuple(fixations), width, height, **metadata)
        return scanpath.with_off_image(off_image)

    @classmethod
    def from_points(
        cls,
        points: ArrayLike,
        *,
        width: int,
        height: int,
        off_image: OffImagePolicy = "drop",
        **metadata: Any,
    ) -> Scanpath:
        """Build a scanpath from an ``(N, 2)`` array of ``(x, y)`` pixel positions.

        Parameters
        ----------
        points : array_like, shape (N, 2)
            ``(x, y)`` in pixels of the referenced image. An empty list or an array of shape
            ``(0, 2)`` gives an empty scanpath.
        width, height : int
            Image size in pixels.
        off_image : {"drop", "clip", "error"}
            Policy for fixations outside the image, see :meth:`with_off_image`.
        **metadata
            ``image``, ``id``, ``subject``, ``task``, ``condition``, ``extra``.

        Raises
        ------
        ValueError
            If ``points`` does not have shape ``(N, 2)`` or holds non-finite values.
        TypeError
            If ``points`` is not numeric.
        """
        array = np.asarray(points)
        if array.size == 0 and array.ndim == 1:
            array = array.reshape(0, 2)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2) holding (x, y) pixels, got shape {array.shape}.")
        if array.size and array.dtype.kind not in "iuf":
            raise TypeError(f"points must be numeric (int or float), got dtype {array.dtype}.")
        return cls.from_xy(array[:, 0], array[:, 1], width=width, height=height, off_image=off_image, **metadata)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], *, off_image: OffImagePolicy = "drop") -> Scanpath:
        """Build a scanpath from a record written by :meth:`to_dict` (one JSON Lines row).

        Optional keys may be missing or ``None`` (as ``datasets.load_dataset("json")`` fills
        them); ``extra: None`` means no extra fields.

        Parameters
        ----------
        record : Mapping
            Keys ``width``, ``height``, ``fixations`` (required) and ``id``, ``image``,
            ``subject``, ``task``, ``condition``, ``extra`` (optional). Each fixation is a mapping
            with ``x``, ``y`` (required) and ``duration_ms``, ``onset_ms`` (optional).
        off_image : {"drop", "clip", "error"}
            Policy for fixations outside the image, see :meth:`with_off_image`.

        Raises
        ------
        KeyError
            If a required key is missing; the message names it and the record's id.
        ValueError
            If the record has keys this format does not define (put them under ``extra``).
        """
        _check_policy(off_image)
        if not isinstance(record, Mapping):
            raise TypeError(f"record must be a mapping, got {type(record).__name__}.")
        where = f"scanpath record id={record.get('id')!r}"
        unknown = sorted(str(key) for key in record if key not in _RECORD_KEYS)
        if unknown:
            raise ValueError(
                f"{where} has unknown keys {unknown}; allowed keys are {list(_RECORD_KEYS)}. "
                "Move dataset-specific fields under 'extra'."
            )
        for key in ("width", "height", "fixations"):
            if record.get(key) is None:
                raise KeyError(f"{where} has no {key!r}; every record needs width, height, fixations.")
        columns: dict[str, list[Any]] = {key: [] for key in _FIXATION_KEYS}
        for i, item in enumerate(record["fixations"]):
            if not isinstance(item, Mapping):
                raise TypeError(f"{where}: fixations[{i}] must be a mapping, got {item!r}.")
            unknown = sorted(str(key) for key in item if key not in _FIXATION_KEYS)
            if unknown:
                raise ValueError(
                    f"{where}: fixations[{i}] has unknown keys {unknown}; allowed keys are {list(_FIXATION_KEYS)}."
                )
            for key in ("x", "y"):
                if item.get(key) is None:
                    raise KeyError(f"{where}: fixations[{i}] has no {key!r}.")
            for key in _FIXATION_KEYS:
                columns[key].append(item.get(key))
        metadata = {key: record.get(key) for key in _METADATA_FIELDS}
        try:
            return cls.from_xy(
                columns["x"],
                columns["y"],
                duration_ms=columns["duration_ms"],
                onset_ms=columns["onset_ms"],
                width=record["width"],
                height=record["height"],
                off_image=off_image,
                extra=record.get("extra") or {},
                **metadata,
            )
        except (TypeError, ValueError) as err:
            raise _same_kind(err, f"{where}: {err}") from None

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.fixations)

    def __iter__(self) -> Iterator[Fixation]:
        return iter(self.fixations)

    @property
    def xy(self) -> np.ndarray:
        """float64 array of shape ``(N, 2)``: ``(x, y)`` in image pixels; ``(0, 2)`` if empty."""
        return np.array([(f.x, f.y) for f in self.fixations], dtype=np.float64).reshape(-1, 2)

    @property
    def on_image(self) -> np.ndarray:
        """bool array of shape ``(N,)``: ``0 <= x < width`` and ``0 <= y < height``."""
        xy = self.xy
        return (xy[:, 0] >= 0) & (xy[:, 0] < self.width) & (xy[:, 1] >= 0) & (xy[:, 1] < self.height)

    def _describe(self) -> str:
        return f"scanpath id={self.id!r} image={self.image!r} ({self.width}x{self.height} px)"

    def prefix(self, n: int) -> Scanpath:
        """Return the first ``n`` fixations in viewing order, with all metadata unchanged.

        Parameters
        ----------
        n : int
            Number of fixations to keep, ``0 <= n <= len(self)``.

        Raises
        ------
        ValueError
            If ``n`` is negative or larger than the number of fixations.
        """
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}.")
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}.")
        if n > len(self):
            raise ValueError(
                f"asked for the first {n} fixations but {self._describe()} has only "
                f"{len(self)}; skip this scanpath or use a smaller n."
            )
        return dataclasses.replace(self, fixations=self.fixations[:n])

    def with_off_image(self, policy: OffImagePolicy = "drop") -> Scanpath:
        """Apply an off-image policy to fixations outside ``[0, width) x [0, height)``.

        Parameters
        ----------
        policy : {"drop", "clip", "error"}
            ``"drop"``: remove them, warning with the count. ``"clip"``: move each to the nearest
            on-image point, i.e. clamp ``x`` to ``[0, nextafter(width, 0)]`` and ``y`` likewise,
            keeping its times; warns with the count. ``"error"``: raise.

        Returns
        -------
        Scanpath
            ``self`` if every fixation is on the image, else a new scanpath with the same
            metadata.

        Raises
        ------
        ValueError
            With ``policy="error"``, listing the count and the first few ``(index, x, y)``.

        Warns
        -----
        UserWarning
            With ``"drop"`` or ``"clip"`` when at least one fixation was off the image.
        """
        _check_policy(policy)
        inside = self.on_image
        n_off = int((~inside).sum())
        if n_off == 0:
            return self
        if policy == "error":
            listed = [(i, f.x, f.y) for i, f in enumerate(self.fixations) if not inside[i]][:_MAX_LISTED]
            more = " ..." if n_off > _MAX_LISTED else ""
            raise ValueError(
                f"{n_off} of {len(self)} fixations of {self._describe()} are off the image; "
                f"(index, x, y): {listed}{more}. Check that the coordinates are in pixels of this "
                "image (not of a padded display frame), or use off_image='drop' or 'clip'."
            )
        if policy == "drop":
            fixations = tuple(f for f, keep in zip(self.fixations, inside) if keep)
            action = "dropped"
        else:
            x_max = float(np.nextafter(float(self.width), 0.0))
            y_max = float(np.nextafter(float(self.height), 0.0))
            fixations = tuple(
                f if keep else dataclasses.replace(f, x=min(max(f.x, 0.0), x_max), y=min(max(f.y, 0.0), y_max))
                for f, keep in zip(self.fixations, inside)
            )
            action = "clipped to the image border"
        warnings.warn(
            f"{self._describe()}: {action} {n_off} of {len(self)} fixations outside the image (off_image={policy!r}).",
            UserWarning,
            stacklevel=2,
        )
        return dataclasses.replace(self, fixations=fixations)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """Return the canonical JSON record (one JSON Lines row).

        Keys, in order: ``id``, ``image``, ``width``, ``height``, ``subject``, ``task``,
        ``condition``, ``fixations`` (list of ``{"x", "y", "duration_ms", "onset_ms"}`` in image
        pixels and milliseconds), ``extra``. Keys whose value is ``None`` are omitted, as is an
        empty ``extra``; fixation dicts omit ``None`` times. All values are plain Python types.

        Raises
        ------
        TypeError, ValueError
            If ``extra`` holds a value JSON cannot represent (the message names it).
        """
        out: dict[str, Any] = {}
        for key in ("id", "image"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["width"] = self.width
        out["height"] = self.height
        for key in ("subject", "task", "condition"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["fixations"] = [f.to_dict() for f in self.fixations]
        if self.extra:
            out["extra"] = _json_plain(self.extra, f"{self._describe()} extra")
        return out


def _rng(generator: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(generator, (bool, np.bool_)):
        raise TypeError("generator must be a numpy Generator, an int seed or None, got a bool.")
    return np.random.default_rng(generator)


def random_fixations(
    n: int,
    width: int,
    height: int,
    *,
    generator: np.random.Generator | int | None = None,
    **metadata: Any,
) -> Scanpath:
    """Draw ``n`` fixations uniformly over the image area ``[0, width) x [0, height)``.

    Parameters
    ----------
    n : int
        Number of fixations, ``>= 0``.
    width, height : int
        Image size in pixels.
    generator : numpy.random.Generator, int or None
        Random source; an int seed gives the same fixations every time, ``None`` fresh entropy.
    **metadata
        Passed to :class:`Scanpath` (``image``, ``id``, ``subject``, ``task``, ``condition``,
        ``extra``).

    Returns
    -------
    Scanpath
        ``n`` fixations in image pixels without times.
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    width = _size(width, "width")
    height = _size(height, "height")
    xy = _rng(generator).random((int(n), 2)) * np.array([width, height], dtype=np.float64)
    # Guard against a product rounding up to the open upper bound.
    xy = np.minimum(xy, [np.nextafter(float(width), 0.0), np.nextafter(float(height), 0.0)])
    fixations = tuple(Fixation(float(x), float(y)) for x, y in xy)
    return Scanpath(fixations, width, height, **metadata)


def matched_random(scanpath: Scanpath, *, generator: np.random.Generator | int | None = None) -> Scanpath:
    """Random-fixation control for ``scanpath`` (the paper's "random fixations" condition).

    Positions are uniform over ``[0, width) x [0, height)`` of the same image; the count and each
    fixation's ``duration_ms`` and ``onset_ms`` are copied, so timing stays matched.

    Parameters
    ----------
    scanpath : Scanpath
        The viewer's scanpath to match.
    generator : numpy.random.Generator, int or None
        Random source, as in :func:`random_fixations`.

    Returns
    -------
    Scanpath
        Same ``image``, ``width``, ``height``, ``subject``, ``task`` and ``extra``;
        ``condition="random"``; ``id`` is the original id with suffix ``"-random"`` (``None`` stays
        ``None``).
    """
    if not isinstance(scanpath, Scanpath):
        raise TypeError(f"scanpath must be a Scanpath, got {type(scanpath).__name__}.")
    points = random_fixations(len(scanpath), scanpath.width, scanpath.height, generator=generator)
    fixations = tuple(
        dataclasses.replace(p, duration_ms=f.duration_ms, onset_ms=f.onset_ms) for p, f in zip(points, scanpath)
    )
    return dataclasses.replace(
        scanpath,
        fixations=fixations,
        id=None if scanpath.id is None else f"{scanpath.id}-random",
        condition="random",
    )
