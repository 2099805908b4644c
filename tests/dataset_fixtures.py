"""Tiny corpora in each dataset's exact on-disk layout, for loader and end-to-end tests.

Audio is a few hundred ms of a tone plus noise whose pitch depends on the label, so that even a
one-epoch model sees a class-related signal; only the layout matters for most tests.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile

EMODB_SPEAKERS = ["03", "08", "09", "10", "11", "12", "13", "14", "15", "16"]
EMODB_LETTERS = "WLEAFTN"


def write_wav(path: Path, seconds: float = 0.3, rate: int = 16000, channels: int = 1, pitch: float = 220.0,
              seed: int = 0) -> Path:
    """A 16-bit PCM tone with harmonics and noise, ``(samples, channels)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in (1, 2, 3)) * 0.2 + rng.normal(0, 0.02, t.shape)
    data = np.stack([wave * (0.8 + 0.2 * c) for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, rate, subtype="PCM_16")
    return path


def write_corrupt(path: Path) -> Path:
    """A ``.wav`` that is not audio (a truncated download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk-not-audio")
    return path


def write_header_only(path: Path) -> Path:
    """A valid wav header with no samples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros((0, 1)), 16000, subtype="PCM_16")
    return path


def make_emodb(root: Path, texts: tuple[str, ...] = ("a01", "b02")) -> Path:
    """``wav/SSTTTEV.wav`` for 10 speakers x 7 emotions x ``texts``, the label folders and text files,
    and a macOS resource fork that must be ignored."""
    for speaker in EMODB_SPEAKERS:
        for text in texts:
            for e, letter in enumerate(EMODB_LETTERS):
                write_wav(root / "wav" / f"{speaker}{text}{letter}a.wav", pitch=150 + 40 * e, seed=int(speaker))
    for folder in ("lablaut", "labsilb", "silb"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "erklaerung.txt").write_bytes("Erklärung der Abkürzungen\n".encode("latin-1"))
    (root / "erkennung.txt").write_bytes("Erkennungsraten\n".encode("latin-1"))
    (root / "wav" / "._03a01Fa.wav").write_bytes(b"\x00\x05\x16\x07")
    return root


RAVDESS_EMOTIONS = ["01", "02", "03", "04", "05", "06", "07", "08"]


def make_ravdess(root: Path, actors: range = range(1, 7)) -> Path:
    """``Audio_Speech_Actors_01-24/Actor_NN/03-01-EE-II-SS-RR-AA.wav`` at 48 kHz (actor 2 in stereo),
    plus one song file (vocal channel 02) that the loader leaves out."""
    base = root / "Audio_Speech_Actors_01-24"
    for actor in actors:
        for e, emotion in enumerate(RAVDESS_EMOTIONS):
            name = f"03-01-{emotion}-01-01-01-{actor:02d}.wav"
            write_wav(base / f"Actor_{actor:02d}" / name, rate=48000, channels=2 if actor == 2 else 1,
                      pitch=150 + 30 * e, seed=actor)
    write_wav(base / "Actor_01" / "03-02-03-01-01-01-01.wav", rate=48000)
    return root


CREMAD_EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def make_cremad(root: Path, actors: range = range(1001, 1011)) -> Path:
    """``AudioWAV/AAAA_SSS_EEE_LL.wav`` for ``actors`` x 6 emotions."""
    for actor in actors:
        for e, emotion in enumerate(CREMAD_EMOTIONS):
            write_wav(root / "AudioWAV" / f"{actor}_DFA_{emotion}_XX.wav", pitch=150 + 40 * e, seed=actor)
    return root


# Per dialog: (turn suffix, category). exc must become happy; fru/xxx/sur are dropped.
IEMOCAP_TURNS = [("F000", "neu"), ("M000", "hap"), ("F001", "exc"), ("M001", "ang"), ("F002", "sad"),
                 ("M002", "fru"), ("F003", "xxx"), ("M003", "neu"), ("F004", "sur"), ("M004", "sad")]
IEMOCAP_KEPT = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}


def _emo_evaluation(dialog: str) -> str:
    """One EmoEvaluation file in the release's format: a header, then per turn a tab-separated label
    line followed by the evaluators' lines."""
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for k, (turn, category) in enumerate(IEMOCAP_TURNS):
        lines += [f"[{2.0 * k + 0.5:.4f} - {2.0 * k + 1.8:.4f}]\t{dialog}_{turn}\t{category}\t[2.5000, 3.0000, 2.5000]",
                  "C-E2:\tNeutral;\t()", "C-E3:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()", ""]
    return "\n".join(lines) + "\n"


def make_iemocap(root: Path) -> tuple[Path, dict[str, str]]:
    """``IEMOCAP_full_release/Session{1..5}`` with one improvised and one scripted dialog each, with
    EmoEvaluation sub-folders and ``._`` files that must be ignored. Returns (root, id -> class)."""
    release = root / "IEMOCAP_full_release"
    expected = {}
    for n in range(1, 6):
        session = release / f"Session{n}"
        labels = session / "dialog" / "EmoEvaluation"
        for dialog in (f"Ses0{n}F_impro01", f"Ses0{n}M_script01_1"):
            labels.mkdir(parents=True, exist_ok=True)
            (labels / f"{dialog}.txt").write_text(_emo_evaluation(dialog))
            (labels / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
            for folder in ("Categorical", "Attribute", "Self-evaluation"):
                (labels / folder).mkdir(exist_ok=True)
                (labels / folder / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
            for k, (turn, category) in enumerate(IEMOCAP_TURNS):
                utterance = f"{dialog}_{turn}"
                write_wav(session / "sentences" / "wav" / dialog / f"{utterance}.wav", pitch=150 + 20 * k, seed=n)
                if category in IEMOCAP_KEPT:
                    expected[utterance] = IEMOCAP_KEPT[category]
    return root, expected


M3ED_SPLITS = {"train": ["anjia", "baobei", "chengren", "dongfang"], "val": ["ershisui"], "test": ["fanghua", "guoer"]}
M3ED_EMOTIONS = ["Happy", "Neutral", "Sad", "Disgust", "Anger", "Fear", "Surprise"]


def make_m3ed(root: Path) -> tuple[Path, dict[str, str]]:
    """``annotation.json``, ``splitInfo/movie_list_*.txt`` and ``wav/{Speaker}_{utterance}.wav``
    (2 clips x 7 utterances per series). Returns (root, utterance id -> series)."""
    annotation, series_of = {}, {}
    for series in sorted(s for names in M3ED_SPLITS.values() for s in names):
        annotation[series] = {}
        for clip in (1, 2):
            dialog = {}
            for k, emotion in enumerate(M3ED_EMOTIONS):
                utterance = f"{series}_{clip}_{k + 1}"
                speaker = "AB"[k % 2]
                dialog[utterance] = {"Speaker": speaker, "Text": "你好", "StartTime": f"00:00:{k:02d}.100",
                                     "EndTime": f"00:00:{k:02d}.900",
                                     "EmoAnnotation": {"EmoAnnotator1": [emotion], "final_main_emo": emotion,
                                                       "final_mul_emos": [emotion]}}
                write_wav(root / "wav" / series / f"{speaker}_{utterance}.wav", pitch=150 + 40 * k, seed=clip)
                series_of[utterance] = series
            annotation[series][f"{series}_{clip}"] = {"Dialog": dialog}
    (root / "annotation.json").write_text(json.dumps(annotation, ensure_ascii=False, indent=1), encoding="utf-8")
    (root / "splitInfo").mkdir(parents=True, exist_ok=True)
    for split, names in M3ED_SPLITS.items():
        (root / "splitInfo" / f"movie_list_{split}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return root, series_of


DAIC_TRAIN = {300: 0, 301: 1, 302: 0, 303: 0, 304: 1, 305: 0, 306: 1, 307: 0, 308: 0, 309: 1}
DAIC_DEV = {310: 0, 311: 1, 312: 0, 313: 1}
DAIC_SPLIT_COLUMNS = ["Participant_ID", "PHQ8_Binary", "PHQ8_Score", "Gender", "PHQ8_NoInterest", "PHQ8_Depressed"]
# Transcript rows: (start, stop, speaker); the 0.2 s participant row is shorter than min_seconds.
DAIC_ROWS = [(0.1, 0.9, "Ellie"), (1.0, 1.8, "Participant"), (1.9, 2.4, "Ellie"), (2.5, 3.4, "Participant"),
             (3.5, 3.7, "Participant"), (3.8, 4.6, "Ellie"), (4.7, 5.6, "Participant")]
DAIC_SEGMENTS = 3  # Participant rows of at least 0.5 s


def _write_split(path: Path, labels: dict[int, int]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DAIC_SPLIT_COLUMNS)
        for pid, label in labels.items():
            writer.writerow([pid, label, 14 if label else 3, pid % 2, 1, 2 if label else 0])


def make_daicwoz(root: Path) -> Path:
    """Sessions ``XXX_P/`` with a 6 s ``XXX_AUDIO.wav`` and a tab-separated ``XXX_TRANSCRIPT.csv``, the
    AVEC 2017 train/dev split files and the unlabelled test split."""
    for pid, label in (DAIC_TRAIN | DAIC_DEV).items():
        folder = root / f"{pid}_P"
        write_wav(folder / f"{pid}_AUDIO.wav", seconds=6.0, pitch=140 + 80 * label, seed=pid)
        text = ["start_time\tstop_time\tspeaker\tvalue"]
        text += [f"{start:.3f}\t{stop:.3f}\t{speaker}\t{'hi how are you' if speaker == 'Ellie' else 'okay'}"
                 for start, stop, speaker in DAIC_ROWS]
        (folder / f"{pid}_TRANSCRIPT.csv").write_text("\n".join(text) + "\n")
        (folder / f"{pid}_COVAREP.csv").write_text("0,0,0\n")
    _write_split(root / "train_split_Depression_AVEC2017.csv", DAIC_TRAIN)
    _write_split(root / "dev_split_Depression_AVEC2017.csv", DAIC_DEV)
    (root / "test_split_Depression_AVEC2017.csv").write_text("participant_ID,Gender\n400,1\n")
    return root


def make_features(root: Path, speakers: int = 6, per_speaker: int = 8, dim: int = 12, split: bool = False,
                  with_speaker: bool = True, mat_every: int = 0) -> Path:
    """Random separable ``(frames, dim)`` arrays and ``labels.csv`` (name,label[,split][,speaker]);
    every ``mat_every``-th file is a MATLAB ``.mat`` instead of ``.npy``."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = ["calm", "excited", "low"]
    rows = []
    for s in range(speakers):
        for i in range(per_speaker):
            label = i % len(labels)
            array = rng.normal(size=(int(rng.integers(20, 50)), dim)).astype(np.float32)
            array[:, 4 * label: 4 * label + 4] += 1.5  # a band of 4 dims per class
            name = f"spk{s}_utt{i}"
            if mat_every and (s * per_speaker + i) % mat_every == 0:
                savemat(str(root / f"{name}.mat"), {"features": array})
            else:
                np.save(root / f"{name}.npy", array)
            row = {"name": name, "label": labels[label]}
            if split:
                row["split"] = "test" if s == speakers - 1 else "val" if s == speakers - 2 else "train"
            if with_speaker:
                row["speaker"] = f"spk{s}"
            rows.append(row)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root
