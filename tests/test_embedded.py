"""The embedded (espeak-ng synthesized) corpus: sizes, protocol, determinism, caching."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import espeakng_loader
import numpy as np
import pytest
import soundfile

from bench.data.corpus import Corpus
from bench.data.datasets import embedded
from bench.data.datasets._espeak import Prosody, Request, synthesize_batches
from bench.data.datasets.embedded import CLASSES, EmbeddedParams, load, plan_corpus
from bench.registry import DATASETS, BenchError

SMALL = EmbeddedParams(speakers=4, sentences=2)  # 32 utterances, a few seconds to generate


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def default_corpus(tmp_path_factory) -> Corpus:
    """The full default corpus, generated once for the session (about a minute on 2 cores)."""
    return load(None, tmp_path_factory.mktemp("embedded-default"), EmbeddedParams())


def test_registered_with_declared_parameters():
    entry = DATASETS.get("embedded")
    assert entry.obj is load
    assert {p.name for p in entry.params} >= {"seed", "speakers", "sentences", "jitter"}
    assert entry.make_params({"seed": "3"}) == EmbeddedParams(seed=3)
    with pytest.raises(BenchError):
        entry.make_params({"speakers": "2"})


def test_default_corpus_sizes_and_format(default_corpus):
    utterances = default_corpus.utterances
    speakers = {u.speaker for u in utterances}
    sentences = {u.id.split("_s")[1].split("_")[0] for u in utterances}
    assert len(utterances) >= 800 and len(speakers) >= 8 and len(sentences) >= 20
    assert default_corpus.name == "embedded" and default_corpus.classes == CLASSES
    assert default_corpus.headline_metric == "ua" and set(default_corpus.metrics) == {"wa", "ua", "macro_f1"}
    # every sentence in every emotion from every speaker, hence balanced classes
    assert len(utterances) == len(speakers) * len(sentences) * len(CLASSES)
    assert {u.label for u in utterances} == set(CLASSES)
    for u in utterances:
        info = soundfile.info(str(u.path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.0 < info.duration < 8.0, u.id
    seconds = sum(soundfile.info(str(u.path)).duration for u in utterances)
    assert seconds > 30 * 60


def test_default_folds_are_speaker_independent(default_corpus):
    utterances = default_corpus.utterances
    assert len(default_corpus.folds) >= 4
    tested = []
    for fold in default_corpus.folds:
        sets = [{utterances[i].speaker for i in part} for part in (fold.train, fold.val, fold.test)]
        train, val, test = sets
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(val) == 1 and len(test) == 2
        assert sorted(fold.train + fold.val + fold.test) == list(range(len(utterances)))
        tested += sorted(test)
    assert len(tested) == len(set(tested)) == len({u.speaker for u in utterances})  # each tested once


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    first = load(None, tmp_path / "a", SMALL)
    second = load(None, tmp_path / "b", SMALL)
    other = load(None, tmp_path / "c", replace(SMALL, seed=1))
    folder = Path(first.utterances[0].path).parents[2]
    assert snapshot(folder) == snapshot(Path(second.utterances[0].path).parents[2])
    assert first.fingerprint == second.fingerprint != other.fingerprint
    differing = [a.id for a, b in zip(first.utterances, other.utterances) if a.path.read_bytes() != b.path.read_bytes()]
    assert len(differing) == len(first.utterances)


def test_loaded_corpus_matches_its_files(tmp_path):
    corpus = load(None, tmp_path, SMALL)
    assert len(corpus.utterances) == 4 * 2 * 4 and len(corpus.folds) == 2
    for u in corpus.utterances:
        assert u.path.is_file() and u.label in u.id and u.id.startswith(u.speaker)
    assert corpus.utterances[0].path.parents[2] == tmp_path / "embedded" / "seed0-v1-speakers4-sentences2"


def test_second_load_reuses_the_cache(tmp_path, monkeypatch):
    first = load(None, tmp_path, SMALL)

    def fail(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(embedded, "generate", fail)
    assert load(None, tmp_path, SMALL).utterances == first.utterances


class Interrupted(Exception):
    """Stands for Ctrl-C or a crash in the middle of generation."""


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def render_then_interrupt(planned, samples, rate):
        calls.append(planned.id)
        if len(calls) == 5:
            raise Interrupted
        return original(planned, samples, rate)

    original = embedded.render
    monkeypatch.setattr(embedded, "render", render_then_interrupt)
    with pytest.raises(Interrupted):
        load(None, tmp_path, SMALL)
    assert list((tmp_path / "embedded").iterdir()) == []
    monkeypatch.setattr(embedded, "render", original)
    assert len(load(None, tmp_path, SMALL).utterances) == 32


def test_incomplete_folder_is_reported_not_trusted(tmp_path):
    (tmp_path / "embedded" / embedded.folder_name(SMALL) / "wav").mkdir(parents=True)
    with pytest.raises(BenchError, match="metadata.csv"):
        load(None, tmp_path, SMALL)


def test_emotion_rules_without_jitter():
    plan = plan_corpus(EmbeddedParams(speakers=4, sentences=3, jitter=0.0))
    prosody = {(p.speaker, p.emotion): p.request.prosody for p in plan}
    assert len({(p.speaker, p.emotion, p.request.prosody) for p in plan}) == len(prosody)  # no randomness
    for speaker in {p.speaker for p in plan}:
        neutral, happy, angry, sad = (prosody[speaker, e] for e in CLASSES)
        assert sad.rate < neutral.rate < happy.rate < angry.rate
        assert sad.pitch < neutral.pitch < angry.pitch < happy.pitch
        assert sad.range < neutral.range < angry.range <= happy.range
        assert sad.volume < neutral.volume < happy.volume < angry.volume


def test_jitter_makes_emotions_overlap():
    plan = plan_corpus(EmbeddedParams())
    rates = {e: np.array([p.request.prosody.rate for p in plan if p.emotion == e]) for e in CLASSES}
    # some neutral utterances are faster than some angry ones, as between real speakers
    assert rates["neutral"].max() > rates["angry"].min()
    assert rates["happy"].max() > rates["angry"].min() and rates["angry"].max() > rates["happy"].min()


def test_plan_does_not_depend_on_corpus_size():
    small = {p.id: p for p in plan_corpus(SMALL)}
    full = {p.id: p for p in plan_corpus(EmbeddedParams())}
    assert all(full[key] == value for key, value in small.items())


def test_every_speaker_voice_exists_in_the_espeak_data():
    # espeak-ng silently ignores an unknown variant, so check the names against its voice files
    data = Path(espeakng_loader.get_data_path())
    languages = {path.name.lower() for path in (data / "lang").rglob("*") if path.is_file()}
    variants = {path.name for path in (data / "voices" / "!v").iterdir()}
    for _, voice in embedded.SPEAKERS:
        language, variant = voice.split("+")
        assert language.lower() in languages and variant in variants, voice


def test_every_speaker_speaks_in_a_voice_of_its_own():
    text = "The keys are in the top drawer of the desk."
    (rate, outputs), = synthesize_batches([[Request(text, voice, Prosody(), 0) for _, voice in embedded.SPEAKERS]])
    assert rate == 22050
    assert all(len(samples) > rate for samples in outputs)  # real speech, over a second long
    assert len({samples.tobytes() for samples in outputs}) == len(embedded.SPEAKERS)
