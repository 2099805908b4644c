"""The embedded corpus: emotional speech synthesized with espeak-ng, generated on first use.

It needs no download, so it is the benchmark's default dataset. Every sentence is emotionally
neutral text spoken by every synthetic speaker in every emotion; the emotion is carried only by
prosody, rendered with rules in the spirit of Murray & Arnott (1993) and Schröder (2001): pitch
level, pitch range, speaking rate, loudness and pausing. Speakers differ in voice (espeak variant
and English accent) and in their habitual prosody, and every utterance jitters every parameter and
its recording level, so that the classes overlap and a speaker-independent classifier has
something to learn short of 100 %.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from bench.data.corpus import Corpus, Utterance, speaker_folds
from bench.data.datasets._espeak import Prosody, Request, synthesize_batches
from bench.registry import DATASETS, BenchError, param

VERSION = 1  # bump whenever the generated audio changes, so that caches regenerate
SAMPLE_RATE = 16000
CLASSES = ["neutral", "happy", "angry", "sad"]

SENTENCES = (
    "The train leaves the station at seven in the morning.",
    "Please put the blue folder on the kitchen table.",
    "The meeting has been moved to the second floor.",
    "She bought three apples and a loaf of bread.",
    "The window in the back room faces the garden.",
    "We will drive to the city on Thursday afternoon.",
    "The package arrived at the front desk this morning.",
    "His brother works at the library near the bridge.",
    "The report is due at the end of the month.",
    "There is a small lamp next to the bookshelf.",
    "They painted the fence a light shade of grey.",
    "The bus stops at the corner every twenty minutes.",
    "I left my umbrella in the hallway yesterday.",
    "The recipe calls for two cups of flour.",
    "The keys are in the top drawer of the desk.",
    "Our neighbours moved here from another town last year.",
    "The shop closes at six on weekdays.",
    "He wrote the numbers down on a piece of paper.",
    "The river runs along the edge of the park.",
    "You can find the forms on the second shelf.",
    "The flight lands a little after noon.",
    "She turned the page and kept on reading.",
    "The chairs were stacked against the wall.",
    "We usually have lunch at half past twelve.",
)

# (speaker id, espeak voice): accent + voice variant. Listed in pairs of a lower and a higher
# voice; each pair is the test group of one fold, so every fold tests on both pitch registers.
SPEAKERS = (
    ("us_m1", "en-us+m1"), ("us_f1", "en-us+f1"),
    ("gb_m3", "en+m3"), ("gb_f2", "en+f2"),
    ("sc_m2", "en-gb-scotland+m2"), ("sc_f3", "en-gb-scotland+f3"),
    ("cb_m4", "en-029+m4"), ("cb_f4", "en-029+f4"),
    ("ny_m7", "en-us-nyc+m7"), ("rp_f5", "en-gb-x-rp+f5"),
    ("ln_m8", "en-gb-x-gbclan+m8"), ("wm_andrea", "en-gb-x-gbcwmd+Andrea"),
)


@dataclass(frozen=True)
class ProsodyShift:
    """A change of prosody relative to a speaker's neutral voice (espeak units, rate relative)."""

    pitch: float = 0.0  # base pitch, 0..100 scale
    range: float = 0.0  # pitch range, 0..100 scale
    rate: float = 0.0  # relative change of words per minute (0.1 = 10 % faster)
    volume_db: float = 0.0
    word_gap: float = 0.0  # extra pause between words, 10 ms units


# The classic rule set, in short: joy raises pitch most and widens its range, a little faster and
# louder; (hot) anger is much louder and faster, with a wide range but less pitch raise than joy;
# sadness is lower, narrower, slower and quieter, with longer pauses between words.
EMOTION_RULES = {
    "neutral": ProsodyShift(),
    "happy": ProsodyShift(pitch=15, range=30, rate=0.08, volume_db=2, word_gap=0),
    "angry": ProsodyShift(pitch=4, range=15, rate=0.20, volume_db=6, word_gap=0),
    "sad": ProsodyShift(pitch=-10, range=-20, rate=-0.18, volume_db=-5, word_gap=3),
}
# How often each emotion ends a sentence with '!' (espeak then uses its exclamation intonation);
# a tendency, not a rule, so that punctuation does not give the label away either.
EXCLAMATION_PROBABILITY = {"neutral": 0.1, "happy": 0.5, "angry": 0.6, "sad": 0.05}

# Standard deviations at jitter=1: between speakers (habitual prosody) and per utterance.
SPEAKER_SPREAD = ProsodyShift(pitch=4, range=4, rate=0.04, volume_db=1, word_gap=0.5)
UTTERANCE_JITTER = ProsodyShift(pitch=5, range=8, rate=0.06, volume_db=2, word_gap=1)
RECORDING_GAIN_DB = 2.5  # per-utterance level variation (microphone distance), masks loudness
SNR_RANGE_DB = (20.0, 40.0)  # mild white background noise, drawn per utterance
NEUTRAL = Prosody(rate=170, volume=100, pitch=50, range=50, word_gap=0)
HEADROOM_DB = -8.0  # keeps loud (angry, boosted) utterances from clipping


@dataclass
class EmbeddedParams:
    """Each distinct setting is generated and cached in a folder of its own."""

    seed: int = param(0, "corpus generation seed", low=0)
    speakers: int = param(10, "number of synthetic speakers (pairs of a low and a high voice)",
                          low=4, high=len(SPEAKERS))
    sentences: int = param(len(SENTENCES), "number of sentences, each spoken in every emotion",
                           low=1, high=len(SENTENCES))
    jitter: float = param(1.0, "strength of the random prosody variation between speakers and utterances "
                               "(0: every emotion rendered exactly by its rule)", low=0.0, high=3.0)


@dataclass(frozen=True)
class PlannedUtterance:
    """Everything needed to make one utterance, decided before any audio is made."""

    id: str
    speaker: str
    sentence: int
    emotion: str
    request: Request
    gain_db: float  # recording level relative to HEADROOM_DB
    snr_db: float
    noise_seed: int  # for the background noise


def _draw_shift(rng: np.random.Generator, spread: ProsodyShift, strength: float) -> ProsodyShift:
    return ProsodyShift(**{f.name: rng.normal(0.0, strength * getattr(spread, f.name)) for f in fields(spread)})


def _prosody(*shifts: ProsodyShift) -> Prosody:
    """espeak parameters for the neutral voice moved by the sum of ``shifts``, kept in their ranges."""
    total = {f.name: sum(getattr(shift, f.name) for shift in shifts) for f in fields(ProsodyShift)}
    return Prosody(
        rate=int(np.clip(round(NEUTRAL.rate * (1 + total["rate"])), 80, 450)),
        volume=int(np.clip(round(NEUTRAL.volume * 10 ** (total["volume_db"] / 20)), 10, 200)),
        pitch=int(np.clip(round(NEUTRAL.pitch + total["pitch"]), 0, 100)),
        range=int(np.clip(round(NEUTRAL.range + total["range"]), 0, 100)),
        word_gap=int(np.clip(round(NEUTRAL.word_gap + total["word_gap"]), 0, 20)),
    )


def plan_corpus(params: EmbeddedParams) -> list[PlannedUtterance]:
    """All utterances with their random choices, speaker by speaker.

    Each speaker and each utterance draws from its own generator keyed by the seed, a purpose tag
    (1: speaker habit, 2: utterance) and its indices, so a choice does not depend on the order of
    drawing nor on how many speakers or sentences are generated.
    """
    plan = []
    for s, (speaker, voice) in enumerate(SPEAKERS[:params.speakers]):
        habit = _draw_shift(np.random.default_rng([params.seed, 1, s]), SPEAKER_SPREAD, params.jitter)
        for t, sentence in enumerate(SENTENCES[:params.sentences]):
            for e, emotion in enumerate(CLASSES):
                rng = np.random.default_rng([params.seed, 2, s, t, e])
                prosody = _prosody(habit, EMOTION_RULES[emotion], _draw_shift(rng, UTTERANCE_JITTER, params.jitter))
                text = sentence[:-1] + "!" if rng.random() < EXCLAMATION_PROBABILITY[emotion] else sentence
                espeak_seed, noise_seed = (int(x) for x in rng.integers(0, 2**31, size=2))
                plan.append(PlannedUtterance(
                    id=f"{speaker}_s{t:02d}_{emotion}", speaker=speaker, sentence=t, emotion=emotion,
                    request=Request(text, voice, prosody, noise_seed=espeak_seed),
                    gain_db=rng.normal(0.0, params.jitter * RECORDING_GAIN_DB),
                    snr_db=rng.uniform(*SNR_RANGE_DB), noise_seed=noise_seed))
    return plan


@functools.lru_cache(maxsize=None)
def _resampler(rate: int):
    """A torchaudio resampler to 16 kHz, built once: computing its filter costs more than applying it."""
    import torchaudio  # here, so that importing the corpus (and its synthesis workers) stays cheap

    return torchaudio.transforms.Resample(rate, SAMPLE_RATE)


@contextlib.contextmanager
def _single_threaded_torch():
    """Run torch on one thread: for these small convolutions, thread start-up and contention on a
    busy machine cost far more than they save, and a fixed thread count keeps the summation order,
    hence the output bytes, independent of the machine's core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render(planned: PlannedUtterance, samples: np.ndarray, rate: int) -> np.ndarray:
    """espeak's int16 samples at ``rate`` -> the stored 16 kHz int16 signal: resampled, leveled
    and with background noise."""
    import torch

    # Zero-pad to whole seconds: the convolution backend prepares itself anew for every new
    # input length, which costs more than the resampling; the padding is trimmed off again.
    padded = np.zeros(-(-len(samples) // rate) * rate, np.float32)
    padded[:len(samples)] = samples / 32768.0
    with torch.inference_mode():
        wave = _resampler(rate)(torch.from_numpy(padded)).numpy()[:len(samples) * SAMPLE_RATE // rate]
    wave = wave.astype(np.float64) * 10 ** ((HEADROOM_DB + planned.gain_db) / 20)
    voiced = np.abs(wave) > 1e-3
    speech_power = np.mean(wave[voiced] ** 2) if voiced.any() else 1e-6
    noise = np.random.default_rng(planned.noise_seed).normal(0.0, 1.0, wave.shape)
    wave += noise * np.sqrt(speech_power / 10 ** (planned.snr_db / 10))
    return np.clip(np.round(wave * 32767), -32768, 32767).astype(np.int16)


def _show_progress() -> bool:
    """A progress bar only for a person watching a terminal, and never when asked to be quiet."""
    return sys.stderr.isatty() and os.environ.get("HRF_BENCH_QUIET") != "1"


def _write(folder: Path, planned: PlannedUtterance, samples: np.ndarray, rate: int) -> list:
    """Store one utterance; its metadata row."""
    path = Path("wav") / planned.speaker / f"{planned.id}.wav"
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(folder / path, render(planned, samples, rate), SAMPLE_RATE, subtype="PCM_16")
    return [planned.id, path.as_posix(), planned.emotion, planned.speaker, planned.sentence]


def generate(params: EmbeddedParams, folder: Path, workers: int = 2) -> None:
    """Synthesize the corpus into ``folder``: wav/<speaker>/<id>.wav, then metadata.csv."""
    by_speaker: dict[str, list[PlannedUtterance]] = {}
    for planned in plan_corpus(params):
        by_speaker.setdefault(planned.speaker, []).append(planned)
    batches = list(by_speaker.values())  # one espeak-ng process per speaker
    requests = [[planned.request for planned in batch] for batch in batches]
    rows = []
    with (  # closing(): after an error, stop synthesizing batches that nobody will use
        contextlib.closing(synthesize_batches(requests, workers=min(workers, os.cpu_count() or 1))) as synthesized,
        _single_threaded_torch(),
        tqdm(total=sum(map(len, batches)), desc="synthesizing the embedded corpus", unit="utt",
             disable=not _show_progress()) as bar,
    ):
        for batch, (rate, outputs) in zip(batches, synthesized):
            for planned, samples in zip(batch, outputs):
                rows.append(_write(folder, planned, samples, rate))
                bar.update()
    with open(folder / "metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "path", "label", "speaker", "sentence"], *rows])


def folder_name(params: EmbeddedParams) -> str:
    """``seed{seed}-v{VERSION}``, plus every parameter that differs from its default."""
    changed = [f"{k}{v}" for k, v in asdict(params).items() if k != "seed" and v != getattr(EmbeddedParams(), k)]
    return "-".join([f"seed{params.seed}-v{VERSION}", *changed])


def ensure_generated(cache_dir: Path, params: EmbeddedParams) -> Path:
    """The corpus folder, generated first if absent. Generation writes into a temporary folder
    that is renamed into place, so an interrupted run never leaves a half corpus behind, and of
    two concurrent generations the first to finish wins."""
    target = Path(cache_dir) / "embedded" / folder_name(params)
    marker = target / "metadata.csv"  # written last: its presence means the corpus is complete
    if marker.exists():
        return target
    if target.exists():
        raise BenchError(f"{target} exists but holds no metadata.csv, so it is no complete embedded corpus; "
                         "delete it to have it generated again")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        generate(params, staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not marker.exists():  # not because another generation got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _read_metadata(folder: Path) -> list[Utterance]:
    with open(folder / "metadata.csv", newline="") as handle:
        return [Utterance(id=row["id"], label=row["label"], speaker=row["speaker"], path=folder / row["path"])
                for row in csv.DictReader(handle)]


def fingerprint(params: EmbeddedParams) -> str:
    """Identifies the generated content: generator version and every parameter."""
    return f"embedded-v{VERSION}-" + ",".join(f"{k}={v}" for k, v in sorted(asdict(params).items()))


@DATASETS.register("embedded", "emotional speech synthesized with espeak-ng, generated on first use "
                               "(no download): 4 emotions, 10 speakers, 960 utterances", params=EmbeddedParams)
def load(root: Path | None, cache_dir: Path, params: EmbeddedParams) -> Corpus:
    """The embedded corpus, generated into ``cache_dir/embedded`` on first use; ``root`` is unused."""
    folder = ensure_generated(cache_dir, params)
    utterances = _read_metadata(folder)
    speakers = [speaker for speaker, _ in SPEAKERS[:params.speakers]]
    # Pairs of a lower and a higher voice; an odd speaker out joins the last fold's test group.
    groups = [speakers[i:i + 2] for i in range(0, len(speakers) - len(speakers) % 2, 2)]
    groups[-1] += speakers[len(groups) * 2:]
    return Corpus(name="embedded", classes=list(CLASSES), utterances=utterances,
                  folds=speaker_folds(utterances, groups, val_speakers=1, seed=params.seed),
                  sample_rate=SAMPLE_RATE, metrics=("wa", "ua", "macro_f1"), headline_metric="ua",
                  fingerprint=fingerprint(params))
