"""Classic SB3DR losses, run in the same harness as the thesis method (METHODS.md section 4).

Each is a pure function of embeddings (and labels); regularisers on weights (DCML's
lambda ||W||^2) belong to the optimiser's weight decay, since objectives never see params.

DCA (Chen & Fang, ECCV 2018) is provided as IAML per modality + the class-mean discrepancy
(`dca_loss`). Its adversarial part (a sketch-to-shape transformation f_trans trained against a
domain discriminator, eq. 18-20) needs a second network and optimiser, so it is an option of the
training harness, not part of these pure loss functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sb3dr_jax.objectives.common import euclidean_distance_matrix
from sb3dr_jax.objectives.triplet import batch_hard


def _row_dist(a, b):
    return jnp.sqrt(jnp.maximum(jnp.sum((a - b) ** 2, -1), 1e-12))


def siamese_pair_loss(a, b, same, c_p: float = 0.2, c_n: float = 10.0) -> jnp.ndarray:
    """L(a, b, y) = (1 - y) alpha D^2 + y beta exp(gamma D), y = 0 for the same class.

    Wang, Kang & Li, CVPR 2015: alpha = 1/C_p, beta = C_n, gamma = -2.77/C_n.

    Args:
      a: [b, E]; b: [b, E] paired embeddings.
      same: [b] bool, True when the pair shares a class.
      c_p: C_p.
      c_n: C_n.

    Returns:
      [b] losses.
    """
    d = _row_dist(a, b)
    return jnp.where(same, d**2 / c_p, c_n * jnp.exp(-2.77 / c_n * d))


def siamese_loss(s1, s2, v1, v2, same_ss, same_vv, same_sv, c_p=0.2, c_n=10.0) -> jnp.ndarray:
    """L(s1, s2) + L(v1, v2) + L(s1, v1): two sketch and two view branches, [b] each."""
    return (
        siamese_pair_loss(s1, s2, same_ss, c_p, c_n)
        + siamese_pair_loss(v1, v2, same_vv, c_p, c_n)
        + siamese_pair_loss(s1, v1, same_sv, c_p, c_n)
    )


def _contrastive(d2, same, h, valid):
    per = jnp.where(same, d2, jnp.maximum(0.0, h - d2))
    return jnp.sum(per * valid) / jnp.maximum(valid.sum(), 1.0)


def dcml_loss(s, s_labels, t, t_labels, alpha: float = 0.5, h: float = 1.0) -> jnp.ndarray:
    """DCML (Dai et al., AAAI 2017): alpha L_d + (1 - alpha) L_c.

    L_d: contrastive within each domain (positive pairs ||.||^2, negatives max(0, h - ||.||^2));
    L_c: the same across domains plus L_2c = mean over paired items i, j (s_i paired with t_i)
    of (||s_i - s_j|| - ||t_i - t_j||)^2.

    Args:
      s: [b, E] sketch features; s_labels: [b].
      t: [b, E] shape features paired row by row with `s`; t_labels: [b].
      alpha: within/cross weighting.
      h: margin on squared distances.

    Returns:
      Scalar loss.
    """
    off = 1.0 - jnp.eye(s.shape[0])
    ds2, dt2 = euclidean_distance_matrix(s, s) ** 2, euclidean_distance_matrix(t, t) ** 2
    l_d = _contrastive(ds2, s_labels[:, None] == s_labels[None], h, off) + _contrastive(
        dt2, t_labels[:, None] == t_labels[None], h, off
    )
    dst2 = euclidean_distance_matrix(s, t) ** 2
    l_c = _contrastive(dst2, s_labels[:, None] == t_labels[None], h, jnp.ones_like(dst2))
    l_2c = jnp.sum(((jnp.sqrt(ds2) - jnp.sqrt(dt2)) ** 2) * off) / jnp.maximum(off.sum(), 1.0)
    return alpha * l_d + (1 - alpha) * (l_c + l_2c)


def sinkhorn_barycentre(hists, cost, eps: float = 0.05, iters: int = 50) -> jnp.ndarray:
    """Entropic Wasserstein barycentre (iterative Bregman projections, Benamou et al. 2015).

    Args:
      hists: [V, n] histograms (rows sum to 1).
      cost: [n, n] ground cost.
      eps: entropic regularisation.
      iters: fixed number of iterations (jit friendly).

    Returns:
      [n] the barycentre with uniform weights.
    """
    k = jnp.exp(-cost / eps)
    v0 = jnp.ones_like(hists)

    def body(v, _):
        u = hists / jnp.maximum(v @ k.T, 1e-30)
        kt_u = u @ k
        bary = jnp.exp(jnp.mean(jnp.log(jnp.maximum(v * kt_u, 1e-30)), 0))
        return bary[None] / jnp.maximum(kt_u, 1e-30), None

    v, _ = jax.lax.scan(body, v0, None, length=iters)
    u = hists / jnp.maximum(v @ k.T, 1e-30)
    return jnp.exp(jnp.mean(jnp.log(jnp.maximum(v * (u @ k), 1e-30)), 0))


def lwbr_descriptor(view_features, eps: float = 0.05, iters: int = 50) -> jnp.ndarray:
    """LWBR (Xie et al., CVPR 2017) shape descriptor: barycentre of softmax-normalised views.

    Args:
      view_features: [B, V, F].
      eps: entropic regularisation.
      iters: Sinkhorn iterations.

    Returns:
      [B, F] barycentres (on a 1-D feature-index support with squared-distance cost).
    """
    f = view_features.shape[-1]
    grid = jnp.linspace(0.0, 1.0, f)
    cost = (grid[:, None] - grid[None]) ** 2
    hists = jax.nn.softmax(view_features, -1)
    return jax.vmap(lambda h: sinkhorn_barycentre(h, cost, eps, iters))(hists)


def lwbr_loss(s, s_labels, shapes, shape_labels, margin: float = 1.0) -> jnp.ndarray:
    """Cross-domain pull of positives, push of negatives past the margin (LWBR eq. 14).

    Args:
      s: [b, E] sketch features; s_labels: [b].
      shapes: [g, E] shape descriptors; shape_labels: [g].
      margin: alpha.

    Returns:
      Scalar loss (mean over all sketch/shape pairs).
    """
    d2 = euclidean_distance_matrix(s, shapes) ** 2
    same = s_labels[:, None] == shape_labels[None]
    return jnp.mean(jnp.where(same, d2, jnp.maximum(0.0, margin - d2)))


def iaml_loss(z, labels, eta: float = 0.5) -> jnp.ndarray:
    """DCA importance-aware metric learning: max(0, eta - [||z - n*|| - ||z - p*||]) per item."""
    d = euclidean_distance_matrix(z, z)
    same = labels[:, None] == labels[None]
    eye = jnp.eye(z.shape[0], dtype=bool)
    return batch_hard(d, same & ~eye, ~same, eta)


def class_mean_discrepancy(z_sketch, y_sketch, z_shape, y_shape, num_classes: int) -> jnp.ndarray:
    """DCA L_CMD = sum over classes present in both domains of ||E[z_t | y] - E[z_shape | y]||."""

    def means(z, y):
        z = jnp.asarray(z, jnp.float32)
        s = jax.ops.segment_sum(z, y, num_segments=num_classes)
        n = jax.ops.segment_sum(jnp.ones_like(y, z.dtype), y, num_segments=num_classes)
        return s / jnp.maximum(n, 1.0)[:, None], n > 0

    ms, ps = means(z_sketch, y_sketch)
    mt, pt = means(z_shape, y_shape)
    return jnp.sum(jnp.where(ps & pt, _row_dist(ms, mt), 0.0))


def dca_loss(
    z_sketch,
    y_sketch,
    z_shape,
    y_shape,
    num_classes: int,
    eta: float = 0.5,
    w_cmd: float = 1.0,
) -> jnp.ndarray:
    """DCA without its GAN part: mean IAML in each modality + w_cmd * L_CMD.

    Args:
      z_sketch: [b, E] (transformed) sketch features; y_sketch: [b].
      z_shape: [g, E] shape features; y_shape: [g].
      num_classes: C.
      eta: the IAML margin.
      w_cmd: weight of the class-mean discrepancy.

    Returns:
      Scalar loss.
    """
    return (
        iaml_loss(z_sketch, y_sketch, eta).mean()
        + iaml_loss(z_shape, y_shape, eta).mean()
        + w_cmd * class_mean_discrepancy(z_sketch, y_sketch, z_shape, y_shape, num_classes)
    )


def triplet_centre_loss(f, labels, centres, margin: float = 1.0) -> jnp.ndarray:
    """TCL (He et al., CVPR 2018): max(0, D(f, c_y) + m - min_{j != y} D(f, c_j)) per item.

    D is half the squared Euclidean distance, as in the paper; centres are learned and shared
    by both domains (the caller keeps them in its params).
    """
    d = 0.5 * euclidean_distance_matrix(f, centres) ** 2
    own = jax.nn.one_hot(labels, centres.shape[0], dtype=bool)
    return jnp.maximum(
        0.0, jnp.sum(jnp.where(own, d, 0.0), 1) + margin - jnp.min(jnp.where(own, jnp.inf, d), 1)
    )


def quadruplet_loss(a, p, n_view, n_sketch, margin: float = 0.2) -> jnp.ndarray:
    """Domain-balanced quadruplet (Tursun et al., PR 2022), per anchor sketch.

    max(0, m + d(a, p) - d(a, n_view)) + max(0, m + d(a, p) - d(a, n_sketch)), d Euclidean.
    """
    dp = _row_dist(a, p)
    return jnp.maximum(0.0, margin + dp - _row_dist(a, n_view)) + jnp.maximum(
        0.0, margin + dp - _row_dist(a, n_sketch)
    )


def soft_target_kl(logits, target_probs, temperature: float = 1.0) -> jnp.ndarray:
    """T^2 KL(sg(target) || softmax(logits / T)) per row: the semantic-knowledge-preservation
    term of the quadruplet method and the soft targets of cross-modal self-distillation."""
    t = jax.lax.stop_gradient(target_probs)
    log_p = jax.nn.log_softmax(logits / temperature, -1)
    return temperature**2 * jnp.sum(t * (jnp.log(jnp.maximum(t, 1e-12)) - log_p), -1)


def cross_modal_self_distillation(
    sketch_logits,
    sketch_labels,
    view_class_probs,
    sketch_memory_probs,
    temperature: float = 1.0,
    w_self: float = 0.5,
) -> jnp.ndarray:
    """Tian et al. 2022: sketches learn the per-class mean view prediction (cross-modal) and the
    per-class mean sketch prediction kept in a memory (sketch self-distillation).

    Args:
      sketch_logits: [b, C].
      sketch_labels: [b].
      view_class_probs: [C, C] per-class mean view predictions (stop-gradient).
      sketch_memory_probs: [C, C] per-class mean sketch predictions from the memory.
      temperature: T.
      w_self: weight of the self-distillation term.

    Returns:
      [b] losses.
    """
    return soft_target_kl(
        sketch_logits, view_class_probs[sketch_labels], temperature
    ) + w_self * soft_target_kl(sketch_logits, sketch_memory_probs[sketch_labels], temperature)


def cosine_logits(z, weights, scale: float = 16.0) -> jnp.ndarray:
    """scale * cos(z_i, w_c): a normalised linear classifier (AM-softmax, CMSD, quadruplet).

    Args:
      z: [b, E] features.
      weights: [E, C] class weight vectors (columns).
      scale: s, the logit scale.

    Returns:
      [b, C] logits.
    """
    zn = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
    wn = weights / jnp.maximum(jnp.linalg.norm(weights, axis=0, keepdims=True), 1e-8)
    return scale * (zn @ wn)


def am_softmax_loss(z, labels, weights, scale: float = 16.0, margin: float = 0.35) -> jnp.ndarray:
    """AM-softmax (Wang et al. 2018), the CGN teacher's classifier loss (Dai & Liang, ICME 2020).

    L_i = -log( e^{s (cos_{y_i} - m)} / (e^{s (cos_{y_i} - m)} + sum_{j != y_i} e^{s cos_j}) ).

    Args:
      z: [b, E] features.
      labels: [b] classes.
      weights: [E, C] class weight vectors.
      scale: s.
      margin: m, subtracted from the target cosine.

    Returns:
      [b] losses.
    """
    logits = cosine_logits(z, weights, scale)
    logits = logits - scale * margin * jax.nn.one_hot(labels, weights.shape[1], dtype=logits.dtype)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None], 1)[:, 0]
