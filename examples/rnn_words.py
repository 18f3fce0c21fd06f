"""The lecture notes' recurrent-network example: learn the stream
"Steven saw Mark. Mark saw John. John saw Steven." word by word.

Dictionary {Steven, Mark, John, saw, .}. An Embedding -> RNN -> Dense model learns to predict
every next word of the stream (100%), then writes a continuation of "Steven". A model that sees
only the current word (Embedding -> Dense) cannot: after "saw" the object depends on the word
before "saw", and after "." the next subject is the word before ".", so it is stuck below 50% and
its continuation goes round in loops, as the notes' "Steven saw Mark saw John saw ...".
Both accuracies are printed.

    python examples/rnn_words.py [OUT_DIR] [--steps 300]
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import fastlayers as fl
from fastlayers import layers as L

VOCAB = ("Steven", "Mark", "John", "saw", ".")
SENTENCES = "Steven saw Mark . Mark saw John . John saw Steven ."


def encode(text):
    return np.array([VOCAB.index(word) for word in text.split()], dtype=np.int64)


def decode(ids):
    return " ".join(VOCAB[i] for i in ids).replace(" .", ".")


def stream(repeats):
    """The three sentences, ``repeats`` times in a row: as (T, 1) inputs and next-word targets."""
    ids = np.tile(encode(SENTENCES), repeats)
    return ids[:-1, None], ids[1:, None]


def recurrent_model(seed=0, hidden_size=16, backend=None):
    rng = np.random.default_rng(seed)
    return L.Sequential(L.Embedding(len(VOCAB), 8, rng=rng), L.RNN(8, hidden_size, rng=rng),
                        L.Dense(hidden_size, len(VOCAB), rng=rng), backend=backend)


def current_word_model(seed=0, backend=None):
    """Sees one word at a time: the same embedding and output layer, no recurrence."""
    rng = np.random.default_rng(seed)
    return L.Sequential(L.Embedding(len(VOCAB), 8, rng=rng), L.Dense(8, len(VOCAB), rng=rng), backend=backend)


def fit(model, inputs, targets, steps, lr=0.02):
    """Adam on the whole stream (one sequence, so the state carries through every sentence), the
    learning rate annealed along a cosine over the steps; the parameters of the lowest loss seen
    are kept (a state_dict checkpoint) and restored at the end. Returns that loss."""
    model.train()
    opt = fl.optim.Adam(model, lr=lr)
    schedule = fl.optim.CosineAnnealingLR(opt, T_max=steps)
    best_loss, best_state = np.inf, None
    for _ in range(steps):
        opt.zero_grad()
        loss, dlogits = fl.losses.softmax_cross_entropy(model.forward(inputs), targets)
        if loss < best_loss:  # the loss of the parameters before this step
            best_loss, best_state = float(loss), model.state_dict()
        model.backward(dlogits)
        opt.step()
        schedule.step()
    model.load_state_dict(best_state)
    return best_loss


def predict(model, ids):
    """Logits of the next word after each of ``ids`` (T, 1), in eval mode, keeping nothing."""
    with fl.no_grad():
        return model.eval().forward(ids)


def next_word_accuracy(model, inputs, targets):
    return float((predict(model, inputs).argmax(axis=-1) == targets).mean())


def generate(model, first_word, length):
    """Greedy continuation: feed the words so far, append the most probable next word."""
    ids = [VOCAB.index(first_word)]
    for _ in range(length):
        logits = predict(model, np.array(ids, dtype=np.int64)[:, None])
        ids.append(int(logits[-1, 0].argmax()))
    return decode(ids)


def run(steps=300, repeats=3, seed=0, backend=None, out_dir=None, verbose=True):
    """Train both models; returns their accuracies, losses, generated texts and training times."""
    inputs, targets = stream(repeats)
    result = {}
    models = {"rnn": recurrent_model(seed, backend=backend), "current_word": current_word_model(seed, backend=backend)}
    for name, model in models.items():
        start = time.perf_counter()
        loss = fit(model, inputs, targets, steps)
        seconds = time.perf_counter() - start
        result[name] = dict(model=model, loss=loss, accuracy=next_word_accuracy(model, inputs, targets),
                            text=generate(model, "Steven", 11), seconds=seconds)
        if verbose:
            print(f"{name:>12}: next-word accuracy {result[name]['accuracy']:6.1%}  loss {loss:.3f}  "
                  f"{steps} steps in {seconds:.2f} s  generates: {result[name]['text']}")
    if out_dir is not None:
        result["picture"] = save_probabilities(result["rnn"]["model"], inputs, pathlib.Path(out_dir))
    return result


def save_probabilities(model, inputs, out_dir):
    """Heat map of the RNN's next-word probabilities along one pass of the stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(SENTENCES.split())
    probs = fl.losses.softmax(predict(model, inputs[:T]))[:, 0]
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.imshow(probs.T, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(T), [VOCAB[i] for i in inputs[:T, 0]], rotation=45, fontsize=8)
    ax.set_yticks(range(len(VOCAB)), VOCAB, fontsize=8)
    ax.set_xlabel("current word")
    ax.set_ylabel("predicted next word")
    ax.set_title("RNN next-word probabilities on \"Steven saw Mark. Mark saw John. John saw Steven.\"", fontsize=9)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rnn_words.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=pathlib.Path, nargs="?")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("cpu", "numpy"), default=None,
                        help="backend of the rnn (default: the dispatch's choice)")
    args = parser.parse_args(argv)
    run(args.steps, seed=args.seed, backend=args.backend, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
