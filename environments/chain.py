"""Exact computations on a chain (first-order Markov) score over token sequences.

A chain score over sequences ``y = (y_0, …, y_{L−1})`` of tokens in ``{0, …, V−1}`` is

    s(y) = Σ_{t=0}^{L−1} unary[t, y_t] + Σ_{t=1}^{L−1} pairwise[y_{t−1}, y_t],

with ``unary`` ``[L, V]`` and ``pairwise`` ``[V, V]`` (the same bigram table at every position).
Its Gibbs distribution is ``p(y) = exp(s(y) − log Z)``, ``log Z = log Σ_y exp(s(y))``.
All the quantities below are exact dynamic programmes in ``O(L·V²)``, never enumerations:

* :func:`chain_score`   — ``s(y)``;
* :func:`viterbi`       — ``argmax_y s(y)`` and its score (max-product);
* :func:`log_partition` — ``log Z`` (sum-product, in log space);
* :func:`forward_log_messages` — the forward messages ``α_t(v) = log Σ_{y_{<t}} exp(s(y_{≤t}))``
  with ``y_t = v`` (the prefix score);
* :func:`sample`        — exact samples of ``p`` by forward filtering / backward sampling
  (FFBS: ``y_{L−1} ~ softmax(α_{L−1})``, then ``y_t | y_{t+1} ~ softmax(α_t + pairwise[:, y_{t+1}])``);
* :func:`entropy`       — ``H(p) = log Z − E_p[s(y)]``, with ``E_p[s]`` from the gradient of ``log Z``
  (the marginals), so it is exact as well.

A temperature ``τ`` is applied by the caller: the distribution ``∝ exp(s/τ)`` is the chain with
``unary/τ`` and ``pairwise/τ``. Every function is unbatched (one chain) and pure, rlax style:
the caller ``vmap``\\ s it over prompts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _check(unary: Array, pairwise: Array) -> None:
    if unary.ndim != 2 or pairwise.shape != (unary.shape[1], unary.shape[1]):
        raise ValueError(
            f"chain: unary has shape {unary.shape} and pairwise {pairwise.shape}; "
            "expected unary [L, V] and pairwise [V, V] (call unbatched functions under vmap)"
        )


def chain_score(unary: Array, pairwise: Array, tokens: Array) -> Array:
    """``s(y)`` of one sequence: ``Σ_t unary[t, y_t] + Σ_{t≥1} pairwise[y_{t−1}, y_t]``.

    Args:
      unary: ``[L, V]`` float.
      pairwise: ``[V, V]`` float, ``pairwise[a, b]`` scores the bigram ``a → b``.
      tokens: ``[L]`` int.

    Returns:
      a float32 scalar.
    """
    _check(unary, pairwise)
    unary = unary.astype(jnp.float32)
    tokens = jnp.asarray(tokens, jnp.int32)
    unary_part = jnp.sum(jnp.take_along_axis(unary, tokens[:, None], axis=1))
    bigram_part = jnp.sum(pairwise.astype(jnp.float32)[tokens[:-1], tokens[1:]])
    return unary_part + bigram_part


def forward_log_messages(unary: Array, pairwise: Array) -> Array:
    """Forward messages ``α`` ``[L, V]`` in log space.

    ``α_0 = unary[0]`` and ``α_t = unary[t] + logsumexp_u(α_{t−1}[u] + pairwise[u, ·])``.
    """
    _check(unary, pairwise)
    unary = unary.astype(jnp.float32)
    pairwise = pairwise.astype(jnp.float32)

    def body(alpha, u_t):
        alpha = u_t + jax.nn.logsumexp(alpha[:, None] + pairwise, axis=0)
        return alpha, alpha

    _, rest = jax.lax.scan(body, unary[0], unary[1:])
    return jnp.concatenate([unary[:1], rest], axis=0)


def log_partition(unary: Array, pairwise: Array) -> Array:
    """``log Z = log Σ_y exp(s(y))`` over all ``V^L`` sequences, float32 scalar."""
    return jax.nn.logsumexp(forward_log_messages(unary, pairwise)[-1])


def viterbi(unary: Array, pairwise: Array) -> tuple[Array, Array]:
    """The maximiser of ``s`` and its score, by max-product dynamic programming in ``O(L·V²)``.

    Ties are broken towards the smallest token index (``argmax`` convention), deterministically.

    Args:
      unary: ``[L, V]``.
      pairwise: ``[V, V]``.

    Returns:
      ``(tokens [L] int32, score [] float32)`` with ``score == chain_score(unary, pairwise, tokens)``.
    """
    _check(unary, pairwise)
    unary = unary.astype(jnp.float32)
    pairwise = pairwise.astype(jnp.float32)

    def forward(delta, u_t):
        cand = delta[:, None] + pairwise  # [prev, next]
        back = jnp.argmax(cand, axis=0).astype(jnp.int32)  # best previous token for each next token
        return u_t + jnp.max(cand, axis=0), back

    delta, backs = jax.lax.scan(forward, unary[0], unary[1:])  # backs [L-1, V]
    last = jnp.argmax(delta).astype(jnp.int32)

    def backward(token, back_t):
        prev = back_t[token]
        return prev, prev

    _, prefix = jax.lax.scan(backward, last, backs, reverse=True)  # prefix[t] = y_t for t < L-1
    tokens = jnp.concatenate([prefix, last[None]])
    return tokens, jnp.max(delta)


def sample(key: Array, unary: Array, pairwise: Array, num_samples: int | None = None) -> Array:
    """Exact samples of ``p(y) ∝ exp(s(y))`` by forward filtering / backward sampling.

    Args:
      key: PRNG key.
      unary: ``[L, V]``.
      pairwise: ``[V, V]``.
      num_samples: ``None`` for one sample ``[L]``, else ``n`` independent samples ``[n, L]``.

    Returns:
      int32 tokens ``[L]`` or ``[n, L]``.
    """
    alpha = forward_log_messages(unary, pairwise)
    pairwise = pairwise.astype(jnp.float32)

    def one(k):
        keys = jax.random.split(k, alpha.shape[0])
        last = jax.random.categorical(keys[-1], alpha[-1]).astype(jnp.int32)

        def backward(nxt, inputs):
            k_t, alpha_t = inputs
            tok = jax.random.categorical(k_t, alpha_t + pairwise[:, nxt]).astype(jnp.int32)
            return tok, tok

        _, prefix = jax.lax.scan(backward, last, (keys[:-1], alpha[:-1]), reverse=True)
        return jnp.concatenate([prefix, last[None]])

    if num_samples is None:
        return one(key)
    return jax.vmap(one)(jax.random.split(key, num_samples))


def entropy(unary: Array, pairwise: Array) -> Array:
    """Shannon entropy (nats) of ``p(y) ∝ exp(s(y))``: ``log Z − E_p[s(y)]``, exact.

    ``E_p[s] = ⟨unary, ∂log Z/∂unary⟩ + ⟨pairwise, ∂log Z/∂pairwise⟩`` because the gradients of
    ``log Z`` are the unary and bigram marginals of ``p``.
    """
    unary = unary.astype(jnp.float32)
    pairwise = pairwise.astype(jnp.float32)
    log_z, (g_u, g_p) = jax.value_and_grad(log_partition, argnums=(0, 1))(unary, pairwise)
    return log_z - jnp.sum(g_u * unary) - jnp.sum(g_p * pairwise)


def marginals(unary: Array, pairwise: Array) -> Array:
    """Per-position token marginals ``p(y_t = v)`` ``[L, V]`` (the gradient of ``log Z`` in ``unary``)."""
    return jax.grad(log_partition)(unary.astype(jnp.float32), pairwise.astype(jnp.float32))
