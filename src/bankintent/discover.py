"""New intents found in traffic: ``bankintent discover RUN --input QUERIES`` groups the queries a
trained model calls out of scope (or all of them, ``all_queries``) into candidate intents, ready for
a person to name and label.

- **Embedding**: the trained model's own (the classifier head's input). Fine-tuning on the known
  intents also spreads banking queries of other intents apart, and on held-out Banking77 intents it
  clustered them better than the frozen base model's embedding (``benchmarks/discover_intents.py``).
- **Clustering**: agglomerative, average linkage on cosine distance, cut at ``distance_threshold``.
  The number of new intents is not known in advance, and a distance cut does not depend on how many
  queries there are (a Ward cut or HDBSCAN's density does); the default cut was chosen on the
  held-out intents' validation queries. Copies of one query (logs repeat "hi" and "card not
  working") are clustered once, and groups of fewer than ``min_size`` distinct queries are left
  unclustered (``cluster`` -1): a query asked many times is one phrasing, too few to define an intent.
- **Description**: each cluster's keywords by class-based TF-IDF over its distinct queries (a word
  frequent in this cluster and rare in the others, as BERTopic does) and its representative queries
  (nearest the centroid).

Output: ``clusters.csv`` (a row per cluster: queries, distinct queries, keywords, representatives),
``queries.csv`` (every query with its cluster, ready for labelling: fill in ``label``), ``map.png``
(a 2-D t-SNE map coloured by cluster) and ``discover.json`` (the counts).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from bankintent.config import check_output_folder
from bankintent.data import check_labelling_sheet, query_key, read_queries, with_input_columns, write_sheet
from bankintent.errors import ConfigError, DataError
from bankintent.results import write_json

log = logging.getLogger(__name__)

DISTANCE_THRESHOLD = 0.6  # cosine distance, average linkage
MIN_SIZE = 5
KEYWORDS = 5
REPRESENTATIVES = 3
QUERY_COLUMNS = ["cluster", "row", "text", "closest_intent", "oos_score", "out_of_scope", "label"]  # queries.csv, to label


def cluster(features: np.ndarray, distance_threshold: float = DISTANCE_THRESHOLD, min_size: int = MIN_SIZE,
            keys: list[str] | None = None) -> np.ndarray:
    """Cluster ids (0 the cluster of most rows, 1 the next...; -1 unclustered) of the rows of
    ``features``. Rows with the same ``keys`` are copies of one query: clustered as one, so that
    ``min_size`` counts distinct queries and a query repeated in the logs does not weigh as many."""
    first: dict = {}
    copy_of = np.array([first.setdefault(k, len(first)) for k in (range(len(features)) if keys is None else keys)], dtype=int)
    if len(first) < 2:
        return np.full(len(features), -1)
    distinct = features[np.unique(copy_of, return_index=True)[1]]
    found = AgglomerativeClustering(n_clusters=None, distance_threshold=distance_threshold, metric="cosine",
                                    linkage="average").fit_predict(distinct)
    sizes = np.bincount(found)
    rows = np.bincount(found[copy_of], minlength=len(sizes))
    order = [c for c in np.argsort(-rows, kind="stable") if sizes[c] >= min_size]
    renumber = np.full(len(sizes), -1)
    renumber[order] = np.arange(len(order))
    return renumber[found][copy_of]


# words a query asks with that say nothing of what it asks about, beside scikit-learn's English stop words
QUERY_STOP_WORDS = ENGLISH_STOP_WORDS | {"does", "did", "doing", "hi", "hello", "hey", "thanks", "thank", "ok", "okay", "pls", "just"}
# a word in any script ("didn't", "don’t" and "top-up" one each, not "didn" and "t", "top" and "up") or a punctuation mark
TOKEN = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*|[^\w\s]")


def terms(text: str) -> list[str]:
    """A query's words and its pairs of neighbouring words, stop words and contractions ("didn't",
    "i'm") left out: a pair is two words next to each other in the query, never two that a stop word
    or a punctuation mark stood between, nor the end of one query and the start of the next."""
    words = [re.sub(r"['’]s$", "", w) for w in TOKEN.findall(text.lower())]  # "card's": card
    words = [w if w[0].isalnum() and len(w) > 1 and not {"'", "’"} & set(w) and w not in QUERY_STOP_WORDS else None
             for w in words]
    return [w for w in words if w] + [f"{a} {b}" for a, b in zip(words, words[1:]) if a and b]


def singular(word: str) -> str:
    """A word's form for telling keywords apart: a plural's final s dropped ("cards": card), not that
    of "address" or "status"."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) else word


def keywords(texts: list[str], clusters: np.ndarray, top: int = KEYWORDS) -> dict[int, list[str]]:
    """Class-based TF-IDF: each cluster's queries counted together; a term's frequency in the cluster
    (normalised by its length) times log(1 + mean words per cluster / the term's frequency over all).
    A term whose words the cluster's higher terms already show ("exchange rate" after "exchange" and
    "rate", "cards" after "card") is passed over for the next."""
    ids = sorted(c for c in set(clusters.tolist()) if c >= 0)
    if not ids:
        return {}
    try:
        vectorizer = CountVectorizer(analyzer=terms)
        per_query = vectorizer.fit_transform(texts)
    except ValueError:  # only stop words
        return {k: [] for k in ids}
    counts = np.stack([np.asarray(per_query[clusters == k].sum(0)).ravel() for k in ids]).astype(float)
    tf = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    idf = np.log(1 + counts.sum(1).mean() / np.maximum(counts.sum(0), 1))
    names = vectorizer.get_feature_names_out()
    chosen = {}
    for i, k in enumerate(ids):
        shown, words = [], set()
        for j in np.argsort(-(tf[i] * idf), kind="stable"):
            if len(shown) == top or counts[i, j] == 0:
                break
            forms = {singular(w) for w in names[j].split()}
            if not forms <= words:
                shown.append(str(names[j]))
                words |= forms
        chosen[k] = shown
    return chosen


def representatives(texts: list[str], features: np.ndarray, clusters: np.ndarray, keys: list[str],
                    top: int = REPRESENTATIVES) -> dict[int, list[str]]:
    """Each cluster's queries nearest its normalised centroid, one text of each query (``keys``: "hi"
    and "HI" are one, as ``cluster`` counts them), so that its examples show distinct phrasings."""
    out = {}
    for k in sorted(c for c in set(clusters.tolist()) if c >= 0):
        members = np.flatnonzero(clusters == k)
        centroid = features[members].mean(0)
        ranked = members[np.argsort(-(features[members] @ centroid), kind="stable")]
        first = {}
        for i in ranked:
            first.setdefault(keys[i], texts[i])
        out[k] = list(first.values())[:top]
    return out


def map_figure(features: np.ndarray, clusters: np.ndarray, names: dict[int, str], path: Path, seed: int) -> None:
    """A 2-D t-SNE map of the queries (PCA below 50 points), one colour per cluster, unclustered grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(features) >= 50:
        points = TSNE(2, perplexity=min(30.0, (len(features) - 1) / 3), init="pca", random_state=seed).fit_transform(features)
    else:
        points = PCA(2, random_state=seed).fit_transform(features) if len(features) > 2 else np.zeros((len(features), 2))
    fig, ax = plt.subplots(figsize=(9, 7))
    noise = clusters < 0
    ax.scatter(points[noise, 0], points[noise, 1], s=6, c="#cccccc", label="unclustered")
    cmap = plt.get_cmap("tab20")
    for k in sorted(set(clusters[~noise].tolist())):
        members = clusters == k
        ax.scatter(points[members, 0], points[members, 1], s=8, color=cmap(k % 20))
        x, y = points[members].mean(0)
        ax.annotate(f"{k}: {names.get(k, '')}", (x, y), fontsize=7, ha="center")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{len(features)} queries, {len(set(clusters[~noise].tolist()))} candidate intents (t-SNE of the model's embedding)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def discover(run: str | Path, input: str | Path, output: str | Path, all_queries: bool = False, text_column: str = "text",
             distance_threshold: float = DISTANCE_THRESHOLD, min_size: int = MIN_SIZE, seed: int = 42, overwrite: bool = False) -> dict:
    """Cluster ``input``'s out-of-scope queries (``all_queries``: every query) into ``output``;
    returns the counts (``discover.json``). A ``queries.csv`` there with labels filled in is replaced
    only with ``overwrite``."""
    from bankintent.predict import Predictor, softmax

    if min_size < 1:
        raise ConfigError(f"--min-size must be at least 1, got {min_size}")
    if not 0 < distance_threshold <= 2:
        raise ConfigError(f"--distance-threshold is a cosine distance, between 0 and 2; got {distance_threshold}")
    out = Path(output)
    rows, texts, others = read_queries(input, text_column, columns=True)
    check_output_folder(out)
    check_labelling_sheet(out / "queries.csv", QUERY_COLUMNS, overwrite)
    predictor = Predictor.load(run)
    logits, features = predictor.outputs(texts, desc="predicting")
    probabilities = softmax(logits / predictor.spec.temperature)
    if predictor.oos_threshold is None:
        if not all_queries:
            raise DataError(f"{run}: the model has no out-of-scope detector; pass --all to cluster every query")
        scores = np.full(len(texts), np.nan)
    else:
        scores = predictor.oos_scores(probabilities, features)
    out_of_scope = predictor.turned_away(scores)
    chosen = np.arange(len(texts)) if all_queries else np.flatnonzero(out_of_scope)
    chosen_features = features[chosen] / np.linalg.norm(features[chosen], axis=1, keepdims=True).clip(1e-12)
    chosen_texts = [texts[i] for i in chosen]
    keys = [query_key(text) for text in chosen_texts]
    clusters = cluster(chosen_features, distance_threshold, min_size, keys)
    firsts = np.unique(keys, return_index=True)[1] if keys else np.zeros(0, dtype=int)
    words = keywords([chosen_texts[i] for i in firsts], clusters[firsts])
    examples = representatives(chosen_texts, chosen_features, clusters, keys)

    out.mkdir(parents=True, exist_ok=True)
    closest = probabilities.argmax(1)
    write_sheet(pd.DataFrame([{
        "cluster": k, "size": int((clusters == k).sum()), "distinct": int((clusters[firsts] == k).sum()), "keywords": ", ".join(words[k]),
        **{f"example_{j + 1}": text for j, text in enumerate(examples[k])},
    } for k in sorted(words)], columns=["cluster", "size", "distinct", "keywords"] + [f"example_{j + 1}" for j in range(REPRESENTATIVES)]
    ), out / "clusters.csv")
    queries = pd.DataFrame({
        "cluster": clusters, "row": [rows[i] for i in chosen], "text": chosen_texts,
        "closest_intent": [predictor.labels[closest[i]] for i in chosen],
        "oos_score": np.round(scores[chosen], 6), "out_of_scope": out_of_scope[chosen], "label": "",
    }, columns=QUERY_COLUMNS)
    queries = with_input_columns(queries, [others[i] for i in chosen])
    order = np.lexsort((queries["row"], np.where(queries["cluster"] < 0, np.iinfo(np.int64).max, queries["cluster"])))
    write_sheet(queries.iloc[order], out / "queries.csv")  # by cluster, the unclustered last; by row within one
    if len(chosen):
        map_figure(chosen_features, clusters, {k: ", ".join(v[:2]) for k, v in words.items()}, out / "map.png", seed)
    summary = {
        "run": str(run), "input": str(input), "queries": len(texts), "out_of_scope": int(out_of_scope.sum()),
        "clustered_queries": len(chosen), "distinct_queries": len(firsts),
        "selection": "all" if all_queries else "out_of_scope",  # the queries grouped
        "clusters": len(words), "in_clusters": int((clusters >= 0).sum()), "unclustered": int((clusters < 0).sum()),
        "distance_threshold": distance_threshold, "min_size": min_size,
    }
    write_json(out / "discover.json", summary)
    return summary
