"""The scene store: decoded scenes and their encodings, least recently used first out.

A scene is registered once (uploaded or named from the stimulus folder) under its content id and
encoded once per peripheral blur (two DINOv2 passes, ``pipe.encode_scene``); every later render of
that scene at that blur reuses the encoding. The store holds at most ``max_bytes`` of decoded
pixels and encoding tensors; registering or encoding beyond that evicts the least recently used
scenes (a request for an evicted scene gets a 404 asking to register it again). The newest scene
is never evicted, so one scene larger than the budget still works, alone.

Thread-safe: the event loop looks scenes up while the worker thread adds encodings.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from metamergen.encoders.scene import SceneEncoding

__all__ = ["Scene", "SceneCache", "scene_id"]


def scene_id(image: Image.Image) -> str:
    """The content id of an RGB scene: 32 hex digits of SHA-256 over its size and pixels.

    Two files with the same decoded pixels (a PNG and its re-save, say) get the same id, so they
    share one encoding; the same file re-saved as JPEG does not (its pixels differ).
    """
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:32]


def _tensor_bytes(encoding: SceneEncoding) -> int:
    return sum(t.element_size() * t.nelement() for t in (encoding.sharp, encoding.peripheral, encoding.pixel_values))


@dataclass
class Scene:
    """One registered scene.

    Attributes
    ----------
    scene_id
        Content id (:func:`scene_id`).
    name
        How render records name it: the upload's file name, or the stimulus path as the server
        was given it (``<--stimuli>/<name>``), whichever registered it first.
    image
        The decoded RGB scene (:func:`metamergen.utils.images.load_image`).
    encodings
        Peripheral blur ``s`` -> the :class:`~metamergen.encoders.SceneEncoding` made with it.
    """

    scene_id: str
    name: str
    image: Image.Image
    encodings: dict[float, SceneEncoding] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @property
    def nbytes(self) -> int:
        """Decoded pixels plus every encoding's tensors, bytes."""
        return self.width * self.height * 3 + sum(_tensor_bytes(e) for e in self.encodings.values())


class SceneCache:
    """A bounded, thread-safe LRU store of :class:`Scene` objects.

    Parameters
    ----------
    max_bytes
        Memory budget (see the module docstring).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self._scenes: OrderedDict[str, Scene] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.encodings_made = 0

    def __len__(self) -> int:
        return len(self._scenes)

    def __contains__(self, key: str) -> bool:
        return key in self._scenes

    def get(self, key: str) -> Scene | None:
        """The scene registered under ``key`` (marked as just used), or ``None``."""
        with self._lock:
            scene = self._scenes.get(key)
            if scene is not None:
                self._scenes.move_to_end(key)
            return scene

    def add(self, scene: Scene) -> Scene:
        """Register ``scene``; if its id is registered already, keep (and return) that one."""
        with self._lock:
            existing = self._scenes.get(scene.scene_id)
            if existing is not None:
                self._scenes.move_to_end(scene.scene_id)
                return existing
            self._scenes[scene.scene_id] = scene
            self._evict()
            return scene

    def encoding(self, scene: Scene, blur: float) -> SceneEncoding | None:
        """The cached encoding of ``scene`` at ``blur`` (counted as a hit or a miss)."""
        with self._lock:
            found = scene.encodings.get(blur)
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
                if scene.scene_id in self._scenes:
                    self._scenes.move_to_end(scene.scene_id)
            return found

    def add_encoding(self, scene: Scene, blur: float, encoding: SceneEncoding) -> None:
        """Store ``encoding`` of ``scene`` at ``blur``, evicting other scenes if over budget.

        A scene evicted while a render was encoding it keeps the encoding on the object (that
        render finishes) but is not registered again.
        """
        with self._lock:
            scene.encodings[blur] = encoding
            self.encodings_made += 1
            if scene.scene_id in self._scenes:
                self._scenes.move_to_end(scene.scene_id)
                self._evict()

    def blurs(self, scene: Scene) -> list[float]:
        """The blurs ``scene`` has an encoding for, sorted (read under the lock the worker writes under)."""
        with self._lock:
            return sorted(scene.encodings)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return sum(s.nbytes for s in self._scenes.values())

    def _evict(self) -> None:
        total = sum(s.nbytes for s in self._scenes.values())
        while total > self.max_bytes and len(self._scenes) > 1:
            _, old = self._scenes.popitem(last=False)
            total -= old.nbytes
            self.evictions += 1

    def stats(self) -> dict[str, Any]:
        """Counts for ``/metrics``: scenes, bytes, budget, hits, misses, evictions, encodings made."""
        with self._lock:
            return {
                "scenes": len(self._scenes),
                "bytes": sum(s.nbytes for s in self._scenes.values()),
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "encodings": self.encodings_made,
            }
