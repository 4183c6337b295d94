"""Data curation in plain Python (no Dagster here): probe and quarantine, shots and clips, the demo corpus.

    store.py        the data root (LAVIE_HOME) and content-addressed ingestion into batches
    captioner.py    captions from a local transformers image-to-text model, for clips without one
    probe.py        decode-validate a video with PyAV: its description, or the reason it is quarantined (limits
                    on frame size, duration, frame rate and streams checked from the header first)
    guard.py        each file's work in a process of its own, under a wall-clock limit and a memory ceiling
    clips.py        shots (PySceneDetect), frame-accurate cutting and transcoding (ffmpeg)
    windows.py      the clip settings, and the windows and spans a video's shots are cut into
    per_file.py     the per-file jobs of the probe_and_cut step (guarded workers, or Ray tasks)
    scores.py       CLIP similarity and embedding, aesthetic score, optical-flow motion, per clip
    filtering.py    the keep/drop decision per clip with every reason, near-duplicate removal
    shards.py       WebDataset shards written atomically and reproducibly, and their verification
    report.py       score histograms (PNG) and clip previews (GIF) for metadata and reports
    lineage.py      from a shard sample back to its source file, time range, batch, runs and scores
    demo_corpus.py  the embedded corpus of real and procedural captioned videos and images
                    (run as `python -m lavie_model.curation.demo_corpus OUT_DIR`)

Nothing is imported here, so that training and sampling, which read shard manifests and the data root,
do not need the curation tools (ffmpeg, PySceneDetect, OpenCV).
"""
