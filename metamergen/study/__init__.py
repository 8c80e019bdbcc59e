"""Studies: render scene hypotheses for many fixation lists, resumably (``metamergen generate``).

Three steps, each a module::

    scenes = load_scanpath_scenes("study/scanpaths.jsonl")          # study.scenes
    jobs = plan_study(scenes, StudySettings(prefixes=(1, 2, 3, 5, 10), hypotheses=4), model="...", pipe=pipe)
    run_study(pipe, jobs, "outputs/study")                           # study.run: PNGs + manifest.jsonl

- :mod:`~metamergen.study.scenes`: scenes and their fixation lists, checked before anything is written;
- :mod:`~metamergen.study.plan`: :class:`StudySettings`, :func:`plan_study` (ids and seeds);
- :mod:`~metamergen.study.manifest`: the manifest format, documented in one place;
- :mod:`~metamergen.study.run`: :func:`run_study`, resumable.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "StudyScene": ".scenes",
    "load_fixation_list_scene": ".scenes",
    "load_scanpath_scenes": ".scenes",
    "CONDITIONS": ".plan",
    "NOISE_MODES": ".plan",
    "SKIPPED_PREFIX": ".plan",
    "StudyJob": ".plan",
    "StudySettings": ".plan",
    "plan_study": ".plan",
    "IMAGES_DIR": ".manifest",
    "MANIFEST_COLUMNS": ".manifest",
    "MANIFEST_NAME": ".manifest",
    "append_rows": ".manifest",
    "read_manifest": ".manifest",
    "StudyRunSummary": ".run",
    "run_study": ".run",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
