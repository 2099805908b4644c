"""Audio reading and front-end features, computed once per (corpus content, feature settings) and
cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
from tqdm import tqdm

from bench.data.corpus import Corpus, Utterance, corpus_fingerprint
from bench.paths import atomic_write
from bench.registry import BenchError

log = logging.getLogger("bench")
TARGET_RATE = 16000
NORMALIZATIONS = ("global", "speaker")
OPENSMILE_DIMS = {"egemaps": 88, "compare": 6373}  # openSMILE functionals: eGeMAPS v02, ComParE 2016
# One vector per utterance (one frame): openSMILE's functionals, and the log-mel functionals (8 per mel bin,
# see utterance_functionals). As features, per-speaker normalization standardizes the functionals
# themselves with each speaker's statistics, which frame-level normalization cannot do.
UTTERANCE_KINDS = ("egemaps", "compare", "logmel-stats")
FEATURE_KINDS = ("logmel", "spectrogram", "mfcc", *UTTERANCE_KINDS)
FUNCTIONALS_PER_DIM = 8
# Settings added after runs were keyed without them, with the value those runs had: left out of identities
# while at it (FeatureConfig.identity), and filled into older records when they are read (bench.schema).
ADDED_LATER = {"deltas": 0}
MAX_MEL_BINS = 512  # bounds the filterbank's and every cached frame's size


@dataclass(frozen=True)
class FeatureConfig:
    """Front-end settings; part of every cache key and run record."""

    # logmel | spectrogram | mfcc | logmel-stats (log-mel functionals) | egemaps | compare (openSMILE,
    # the [opensmile] extra)
    kind: str = "logmel"
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_mfcc: int = 40
    # How frames are standardized for a fold (not part of extraction): "global" with the training
    # speakers' mean and variance; "speaker" with each speaker's own statistics, computed from that
    # speaker's unlabeled frames at training and test time alike (a declared, common practice for
    # speaker-independent SER; it needs speaker labels). The default: on EmoDB's validation speakers it
    # lifted the plain models and the SVM alike (docs/recipes.md).
    normalize: str = "speaker"
    # Frame-to-frame dynamics for the model: 1 the delta, 2 the delta and delta-delta (the regression over
    # 5 frames). A backbone registered ``computes_deltas`` builds them into its front-end from the plain
    # frames (bench.training.models.model_inputs); for any other they are appended to each frame here, an
    # input (1 + deltas) times wider. Why: the functionals' SVM tells boredom from neutral speech by the
    # spread of the deltas (tests/benchmarks/functional_ablation.py).
    deltas: int = 0

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise BenchError(f"unknown feature kind {self.kind!r}: use {', '.join(FEATURE_KINDS)}")
        if self.normalize not in NORMALIZATIONS:
            raise BenchError(f"unknown feature normalization {self.normalize!r}: use {' or '.join(NORMALIZATIONS)}")
        if self.n_mels <= 0 or self.win_ms <= 0 or self.hop_ms <= 0:
            raise BenchError(f"feature sizes must be positive, got {self}")
        if self.deltas not in (0, 1, 2):
            raise BenchError(f"deltas must be 0, 1 (delta) or 2 (delta and delta-delta), got {self.deltas}")
        if self.deltas and self.kind in OPENSMILE_DIMS:
            raise BenchError(f"--deltas appends frame dynamics, and {self.kind} is one vector per utterance: "
                             "use logmel, spectrogram, mfcc or logmel-stats")
        if self.n_mels > MAX_MEL_BINS:
            raise BenchError(f"n_mels must be at most {MAX_MEL_BINS}, got {self.n_mels}")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise BenchError(f"mfcc needs n_mfcc <= n_mels, got {self.n_mfcc=}, {self.n_mels=}: raise --n-mels")

    @property
    def dim(self) -> int:
        if self.kind in OPENSMILE_DIMS:
            return OPENSMILE_DIMS[self.kind]
        streams = 1 + self.deltas
        if self.kind == "logmel-stats":
            return FUNCTIONALS_PER_DIM * self.n_mels * streams
        if self.kind == "spectrogram":
            return (self.n_fft // 2 + 1) * streams
        return (self.n_mfcc if self.kind == "mfcc" else self.n_mels) * streams

    @property
    def n_fft(self) -> int:
        return int(round(TARGET_RATE * self.win_ms / 1000))

    @property
    def hop(self) -> int:
        return int(round(TARGET_RATE * self.hop_ms / 1000))

    @property
    def utterance_level(self) -> bool:
        """One vector per utterance (openSMILE functionals) rather than frames."""
        return self.kind in UTTERANCE_KINDS

    @property
    def extraction(self) -> dict:
        """The settings extraction depends on, the feature cache's key (normalization happens per fold)."""
        return {k: v for k, v in self.identity().items() if k != "normalize"}

    def identity(self) -> dict:
        """The settings as part of a run's identity, cache keys and plain-model names: every field, except
        settings added later while at their default (``deltas`` 0), so that what was keyed before they
        existed keeps its name."""
        return {k: v for k, v in asdict(self).items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}

    @property
    def frame_kind(self) -> str | None:
        """The frame-level features an utterance-level kind summarizes (None: openSMILE's own, or frames)."""
        return "logmel" if self.kind == "logmel-stats" else None

    def frames(self, seconds: float) -> int:
        """Frames produced for ``seconds`` of audio (centered STFT; one for utterance-level features)."""
        if self.utterance_level:
            return 1
        return int(seconds * TARGET_RATE) // self.hop + 1


def _valid(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B, T)`` 1.0 at valid frames."""
    return (torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]).to(torch.float32)


def _moments(x: torch.Tensor, weights: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over valid frames: x ``(B, T, F)``, weights ``(B, T)`` -> two ``(B, F)``.

    Sums as batched matrix products, so that the FLOP counter sees the functionals' cost."""
    mean = (weights.unsqueeze(1) @ x).squeeze(1) / count
    square = (weights.unsqueeze(1) @ (x * x)).squeeze(1) / count
    return mean, (square - mean * mean).clamp(min=0.0).sqrt()


def _extremes(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    padded = valid.unsqueeze(-1) == 0
    return x.masked_fill(padded, math.inf).amin(1), x.masked_fill(padded, -math.inf).amax(1)


def utterance_functionals(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x ``(B, T, F)``, lengths ``(B,)`` -> ``(B, 8 F)``: mean, std, min, max of each dimension and of its
    frame-to-frame delta over the valid frames (a one-frame utterance has a zero delta)."""
    valid = _valid(lengths, x.shape[1])
    count = lengths.clamp(min=1).to(x.dtype).unsqueeze(-1)
    mean, std = _moments(x, valid, count)
    low, high = _extremes(x, valid)
    delta = x[:, 1:] - x[:, :-1] if x.shape[1] > 1 else torch.zeros_like(x)
    delta_valid = _valid((lengths - 1).clamp(min=1), delta.shape[1]) if x.shape[1] > 1 else valid
    delta = delta * delta_valid.unsqueeze(-1)  # a one-frame utterance: its only delta is 0
    delta_count = (lengths - 1).clamp(min=1).to(x.dtype).unsqueeze(-1)
    delta_mean, delta_std = _moments(delta, delta_valid, delta_count)
    delta_low, delta_high = _extremes(delta, delta_valid)
    return torch.cat([mean, std, low, high, delta_mean, delta_std, delta_low, delta_high], dim=1)


MIN_SAMPLE_RATE = 8000  # telephone speech; a lower header rate is a damaged file, and resampling it explodes
MAX_UTTERANCE_SECONDS = 600.0  # bounds the memory one utterance may take (attention grows with its square)


def read_audio(utterance: Utterance) -> torch.Tensor:
    """Mono float32 waveform ``(samples,)`` at 16 kHz; raises BenchError naming the file on failure.

    Refused before reading: what is not a regular file (a FIFO would block, a symlink loop never
    resolves), a sample rate under 8 kHz, more than ``MAX_UTTERANCE_SECONDS``; after: non-finite samples."""
    path = Path(utterance.path)
    if not path.is_file():
        raise BenchError(f"audio {path} is not a regular file (missing, a folder, a FIFO or a symlink loop)")
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises several types for broken files
        raise BenchError(f"cannot read audio {path}: {error}") from None
    if info.samplerate < MIN_SAMPLE_RATE:
        raise BenchError(f"audio {path} says its sample rate is {info.samplerate} Hz, under {MIN_SAMPLE_RATE} Hz")
    start = int((utterance.start or 0.0) * info.samplerate)
    stop = int(utterance.end * info.samplerate) if utterance.end is not None else None
    samples = (min(stop, info.frames) if stop is not None else info.frames) - start
    if samples > MAX_UTTERANCE_SECONDS * info.samplerate:
        raise BenchError(f"audio {path} lasts {samples / info.samplerate:.0f} s, more than the "
                         f"{MAX_UTTERANCE_SECONDS:.0f} s one utterance may: cut it into segments")
    try:
        data, rate = soundfile.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as error:
        raise BenchError(f"cannot read audio {path}: {error}") from None
    if data.size == 0:
        raise BenchError(f"audio file {path} is empty")
    if not np.isfinite(data).all():
        raise BenchError(f"audio {path} holds NaN or infinite samples")
    wave = torch.from_numpy(data.mean(axis=1))
    if rate != TARGET_RATE:
        wave = torchaudio.functional.resample(wave, rate, TARGET_RATE)
    return wave


class _OpenSmile:
    """openSMILE functionals of a whole utterance: wave ``(samples,)`` -> ``(1, dims)``."""

    def __init__(self, config: FeatureConfig):
        try:
            import opensmile
        except ImportError:
            raise BenchError(f"--features {config.kind} needs openSMILE: pip install -e '.[opensmile]'") from None
        feature_set = {"egemaps": opensmile.FeatureSet.eGeMAPSv02, "compare": opensmile.FeatureSet.ComParE_2016}
        self.smile = opensmile.Smile(feature_set=feature_set[config.kind],
                                     feature_level=opensmile.FeatureLevel.Functionals)
        self.log = False

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        values = self.smile.process_signal(wave.numpy(), TARGET_RATE).to_numpy(dtype=np.float32)
        return torch.from_numpy(np.nan_to_num(values[:1], nan=0.0, posinf=0.0, neginf=0.0))


class _Frontend:
    """Frame features, or (``logmel-stats``) their utterance functionals: wave ``(samples,)`` -> ``(frames, dims)``."""

    def __init__(self, config: FeatureConfig):
        self.functionals = config.frame_kind is not None
        if self.functionals:
            config = replace(config, kind=config.frame_kind)
        common = dict(sample_rate=TARGET_RATE)
        spec = dict(n_fft=config.n_fft, win_length=config.n_fft, hop_length=config.hop)
        if config.kind == "logmel":
            self.transform = torchaudio.transforms.MelSpectrogram(n_mels=config.n_mels, **common, **spec)
        elif config.kind == "spectrogram":
            self.transform = torchaudio.transforms.Spectrogram(power=2.0, **spec)
        else:
            self.transform = torchaudio.transforms.MFCC(
                n_mfcc=config.n_mfcc, log_mels=True, melkwargs=dict(n_mels=config.n_mels, **spec), **common)
        self.log = config.kind != "mfcc"
        self.deltas = config.deltas

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            spec = self.transform(wave)
            if self.log:
                spec = 10.0 * torch.log10(spec + 1e-10)  # dB
            return self.summarize(with_deltas(spec, self.deltas).T.contiguous()).clone()

    def summarize(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(T, F)`` as they are, or their functionals ``(1, 8 F)``."""
        if not self.functionals:
            return frames
        return utterance_functionals(frames.unsqueeze(0), torch.tensor([frames.shape[0]]))


def with_deltas(spec: torch.Tensor, deltas: int) -> torch.Tensor:
    """``(F, T)`` -> ``(F * (1 + deltas), T)``: the frames, then their delta (and its delta)."""
    streams = [spec]
    for _ in range(deltas):
        streams.append(torchaudio.functional.compute_deltas(streams[-1], win_length=5))
    return torch.cat(streams, dim=0)


def cache_path(corpus: Corpus, config: FeatureConfig, cache_dir: Path, fingerprint: str | None = None) -> Path:
    """Cache file of ``corpus``'s features with ``config``, keyed by the corpus fingerprint (computed
    here unless given)."""
    fingerprint = fingerprint or corpus_fingerprint(corpus, cache_dir)
    key = hashlib.sha1(json.dumps([corpus.name, fingerprint, config.extraction]).encode()).hexdigest()[:16]
    return Path(cache_dir) / "features" / f"{corpus.name}-{config.kind}-{key}.pt"


def _load_array(path: Path) -> torch.Tensor:
    try:
        if path.suffix == ".mat":
            from scipy.io import loadmat
            arrays = [v for k, v in loadmat(str(path)).items() if not k.startswith("__")]
            array = max(arrays, key=lambda a: a.size)
        else:
            array = np.load(path)
    except Exception as error:
        raise BenchError(f"cannot read feature file {path}: {error}") from None
    if array.ndim != 2 or array.shape[0] == 0:
        raise BenchError(f"feature file {path} must hold a (frames, dims) array, got shape {array.shape}")
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def _read_cache(path: Path) -> dict | None:
    """The cached features at ``path``, or None (said on stderr) when the file is unreadable."""
    try:
        cached = torch.load(path, weights_only=True)
        if isinstance(cached, dict) and isinstance(cached.get("features"), dict) and isinstance(cached.get("skipped"), list):
            return cached
        problem = "not a feature cache"
    except Exception as error:  # a truncated or foreign file: torch raises several types
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
    log.warning("feature cache %s is unreadable (%s); extracting the features again", path, problem)
    return None


def _cache_problem(cached: dict, corpus: Corpus) -> str | None:
    """What makes a readable feature cache unusable for ``corpus``, or None: utterances it lacks beyond
    those it lists as skipped (a run would silently test on fewer), or arrays that are not ``(frames > 0,
    dims)`` float tensors of one width."""
    features = cached["features"]
    missing = [u.id for u in corpus.utterances if u.id not in features]
    if len(missing) > len(cached["skipped"]):
        return f"lacks {len(missing)} of the corpus's utterances (first: {missing[0]})"
    widths = set()
    for uid, array in features.items():
        if not (isinstance(array, torch.Tensor) and array.is_floating_point() and array.ndim == 2 and array.shape[0] > 0):
            return f"holds a damaged array for {uid}"
        widths.add(array.shape[1])
    if len(widths) > 1:
        return f"holds arrays of {len(widths)} different widths"
    return None


def _features(u: Utterance, frontend: _Frontend | _OpenSmile, config: FeatureConfig) -> torch.Tensor:
    if u.features is not None:
        array = _load_array(u.features)
        if isinstance(frontend, _Frontend) and frontend.deltas:
            array = with_deltas(array.T.contiguous(), frontend.deltas).T.contiguous()
        if isinstance(frontend, _Frontend) and frontend.functionals:
            return frontend.summarize(array)
        return array
    wave = read_audio(u)
    if wave.numel() < config.n_fft:  # the centered STFT cannot pad a signal shorter than its window
        raise BenchError(f"audio {u.path} lasts {1000 * wave.numel() / TARGET_RATE:.0f} ms, shorter than the "
                         f"{config.win_ms:g} ms analysis window")
    return frontend(wave)


def extract(corpus: Corpus, config: FeatureConfig, cache_dir: Path, progress: bool = True,
            fingerprint: str | None = None) -> dict[str, torch.Tensor]:
    """Features per utterance id, ``(frames, dims)`` float32, read from the cache when present
    (an unreadable cache file is extracted again, with a warning).

    Unreadable files are skipped; their names are appended to ``corpus.skipped`` and printed.
    """
    path = cache_path(corpus, config, cache_dir, fingerprint)
    cached = _read_cache(path) if path.exists() else None
    problem = _cache_problem(cached, corpus) if cached is not None else None
    if problem:
        log.warning("feature cache %s %s; extracting the features again", path, problem)
        cached = None
    if cached is not None:
        for message in cached["skipped"]:  # printed on every use, not only when first extracted
            tqdm.write(f"skipped: {message}")
        corpus.skipped.extend(cached["skipped"])
        return cached["features"]
    frontend = _OpenSmile(config) if config.kind in OPENSMILE_DIMS else _Frontend(config)
    features, skipped = {}, []
    for u in tqdm(corpus.utterances, desc=f"features {corpus.name}", disable=not progress, unit="utt"):
        try:
            features[u.id] = _features(u, frontend, config)
        except BenchError as error:
            skipped.append(str(error))
    if not features:
        raise BenchError(f"no readable utterance in {corpus.name}; first problem: {skipped[0] if skipped else 'empty'}")
    for message in skipped:
        tqdm.write(f"skipped: {message}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"features": features, "skipped": skipped}, tmp))
    corpus.skipped.extend(skipped)
    return features
