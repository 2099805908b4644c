"""A minimal ctypes binding to the libespeak-ng shipped in the ``espeakng-loader`` wheel.

Only what the embedded corpus needs: pick a voice, set prosody parameters and synthesize a text
to 16-bit samples in memory, in synchronous mode (no audio device, no background thread).
espeak-ng keeps its state in process-wide globals, so it is initialized once per process, and
batches are synthesized in fresh child processes (see :func:`synthesize_batches`).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.registry import BenchError

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # synth callback gets the samples; espeak_Synth returns when done
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside the library
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE, _ESPEAK_WORDGAP = 1, 2, 3, 4, 7

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(BenchError):
    """espeak-ng could not be loaded or refused a request."""


@dataclass(frozen=True)
class Prosody:
    """espeak-ng speech parameters, in the units of its API."""

    rate: int = 175  # words per minute, 80..450
    volume: int = 100  # amplitude, 0..200 (100 = normal)
    pitch: int = 50  # base pitch, 0..100, relative to the voice's own pitch
    range: int = 50  # pitch range (intonation excursion), 0..100
    word_gap: int = 0  # extra pause between words, in units of 10 ms


@dataclass(frozen=True)
class Request:
    """One text to speak, with everything that determines its samples."""

    text: str
    voice: str  # espeak voice name plus variant, e.g. "en-us+m3"
    prosody: Prosody
    noise_seed: int  # seeds espeak-ng's own random generator (used by some voices' noise sources)


class Espeak:
    """The process-wide espeak-ng synthesizer; get it with :func:`synthesizer`."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError:
            raise EspeakError("the embedded corpus needs the espeakng-loader package: "
                              "pip install espeakng-loader") from None
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept alive as long as the library may call it
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise EspeakError(f"espeak_Initialize failed with {self.sample_rate}")
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0 = continue synthesis

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise EspeakError(f"espeak-ng refused {what} (error {status})")

    def synthesize(self, request: Request) -> np.ndarray:
        """int16 samples at ``sample_rate`` for one request."""
        voice, prosody = request.voice, request.prosody
        self._check(self._lib.espeak_SetVoiceByName(voice.encode()), f"voice {voice!r}")
        for parameter, value in ((_ESPEAK_RATE, prosody.rate), (_ESPEAK_VOLUME, prosody.volume),
                                 (_ESPEAK_PITCH, prosody.pitch), (_ESPEAK_RANGE, prosody.range),
                                 (_ESPEAK_WORDGAP, prosody.word_gap)):
            self._check(self._lib.espeak_SetParameter(parameter, int(value), 0), f"parameter {parameter}={value}")
        self._lib.espeak_ng_SetRandSeed(ctypes.c_long(request.noise_seed))
        text = request.text.encode() + b"\0"
        self._chunks = []
        status = self._lib.espeak_Synth(text, ctypes.c_size_t(len(text)), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                        None, None)
        self._check(status, f"text {request.text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_instance: Espeak | None = None


def synthesizer() -> Espeak:
    """The process's espeak-ng, initialized on first use."""
    global _instance
    if _instance is None:
        _instance = Espeak()
    return _instance


def _serve_batch() -> None:
    """Child-process side of :func:`synthesize_batches`: pickled requests on stdin, samples on stdout."""
    requests = pickle.load(sys.stdin.buffer)
    espeak = synthesizer()
    samples = [espeak.synthesize(request) for request in requests]
    pickle.dump((espeak.sample_rate, samples), sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)


def _synthesize_in_fresh_process(requests: list[Request]) -> tuple[int, list[np.ndarray]]:
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds the bench package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, "-c", "from bench.data.datasets._espeak import _serve_batch; _serve_batch()"],
                           input=pickle.dumps(requests), capture_output=True, env=env)
    if child.returncode != 0:
        raise EspeakError(f"espeak-ng worker failed: {child.stderr.decode(errors='replace').strip()[-2000:]}")
    return pickle.loads(child.stdout)


def synthesize_batches(batches: list[list[Request]], workers: int = 2) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Yield ``(sample_rate, [int16 samples per request])`` for each batch, in order.

    espeak-ng carries hidden state from one utterance to the next (e.g. the phase of its pitch
    flutter), which no API call resets. Each batch therefore runs in a fresh Python process, so
    its samples depend only on the batch itself, not on what ran before nor on ``workers``.
    A plain subprocess rather than multiprocessing's spawn, which would re-run a caller's
    unguarded ``__main__`` script.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_synthesize_in_fresh_process, batches)
