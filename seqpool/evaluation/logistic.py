"""Many L2-regularised logistic regressions on one feature matrix, solved together.

Choosing C by an inner CV means, per strategy and outer fold, ``inner_folds x len(c_grid)``
fits plus a refit: 31 scikit-learn fits on nearly the same rows (1,860 for six strategies and
ten folds). They differ only in which rows they train on and in C, so this module solves them
all at once: every problem's (standardised-space) weights sit side by side in one matrix, one
``X @ W`` gives every logit and one ``X^T @ R`` every gradient, and a batched L-BFGS
(:func:`batched_lbfgs`) gives each problem its own history, step length and stopping test.

The objective of each problem is scikit-learn's ``LogisticRegression(C=c)`` after a
``StandardScaler`` fitted on that problem's rows: mean log-loss over its rows plus
``||w||^2 / (2 C n)``; binary problems use one logit (sigmoid), more classes the softmax, as
scikit-learn does. The weights are optimised through a per-C preconditioner built from the
eigenvectors of the feature covariance, ``(0.25 * Cov + lambda_C I)^(-1/2)``, which makes the
Hessian close to the identity, so L-BFGS needs tens of iterations, not hundreds. The solution is
the same convex minimiser scikit-learn finds; ``tests/test_evaluation_speed.py`` checks the
chosen C and predictions against scikit-learn per C.

Deterministic: no randomness, fixed iteration rules; the same inputs and thread count give
bit-identical weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

#: L-BFGS settings: a problem stops when the largest entry of its gradient (preconditioned weights
#: and bias) is below ``GRADIENT_TOLERANCE`` (scikit-learn's own default tol is 1e-4 per problem).
GRADIENT_TOLERANCE = 1e-5
MAX_ITERATIONS = 300


@dataclass
class LinearModels:
    """Fitted problems: ``weights[s, c]`` / ``bias[s, c]`` act on rows standardised with
    ``mean[s]`` / ``scale[s]`` (the statistics of row set ``s``); ``c_values[c]`` is its C."""

    weights: np.ndarray  # (sets, Cs, dim, outputs), outputs = 1 for two classes
    bias: np.ndarray  # (sets, Cs, outputs)
    mean: np.ndarray  # (sets, dim)
    scale: np.ndarray  # (sets, dim)
    c_values: tuple[float, ...]
    iterations: int

    def decision(self, x: np.ndarray, row_set: int, c_index: int) -> np.ndarray:
        """(n, outputs) logits of problem (row_set, c_index) on raw features ``x``."""
        standardised = (np.asarray(x, dtype=np.float64) - self.mean[row_set]) / self.scale[row_set]
        return standardised @ self.weights[row_set, c_index] + self.bias[row_set, c_index]

    def predict(self, x: np.ndarray, row_set: int, c_index: int) -> np.ndarray:
        """Class indices predicted by problem (row_set, c_index)."""
        return _classes(self.decision(x, row_set, c_index))

    def predict_all(self, x: np.ndarray) -> np.ndarray:
        """(n, sets, Cs) class indices of every problem on raw features ``x``, from one product:
        the standardisation is folded into the weights (:meth:`_folded`), so all
        problems share one ``x @ W`` instead of a standardised copy of ``x`` per problem."""
        weight, bias = self._folded()
        sets, cs, dim, outputs = weight.shape
        flat = weight.transpose(2, 0, 1, 3).reshape(dim, sets * cs * outputs)
        logits = np.asarray(x, dtype=np.float64) @ flat + bias.reshape(-1)
        return _classes(logits.reshape(len(x), sets * cs, outputs)).reshape(len(x), sets, cs)

    def raw_linear(self, row_set: int, c_index: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(num_classes, dim) weight and (num_classes,) bias acting on raw (unstandardised) features,
        with the standardisation folded in; two classes become the logits ``(0, z)``, which give the
        same argmax and softmax as the sigmoid."""
        weights, biases = self._folded()
        weight, bias = weights[row_set, c_index], biases[row_set, c_index]  # (dim, outputs), (outputs,)
        if weight.shape[1] == 1 and num_classes == 2:
            weight = np.concatenate([np.zeros_like(weight), weight], axis=1)
            bias = np.concatenate([np.zeros_like(bias), bias])
        return weight.T.copy(), bias.copy()

    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(sets, Cs, dim, outputs) weights and (sets, Cs, outputs) biases of every problem acting on
        raw features: ``((x - mean) / scale) @ w + b == x @ (w / scale) + (b - mean @ (w / scale))``."""
        weight = self.weights / self.scale[:, None, :, None]
        return weight, self.bias - np.einsum("sd,scdo->sco", self.mean, weight)


def _classes(logits: np.ndarray) -> np.ndarray:
    """Class indices from (..., outputs) logits: the sign of a single logit, else the argmax."""
    return (logits[..., 0] > 0).astype(np.int64) if logits.shape[-1] == 1 else logits.argmax(axis=-1)


def set_statistics(x: np.ndarray, row_sets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """StandardScaler's mean and scale (population std, 1 where it is 0) of every row set.

    Two products for all sets at once (``weights^T x`` and ``weights^T x^2``, a row's weight
    being how often the set holds it over the set's size), on ``x`` centred by its overall mean
    so the second moment loses no precision to a large mean.
    """
    x = np.asarray(x, dtype=np.float64)
    center = x.mean(axis=0)
    centred = x - center
    weights = np.stack([np.bincount(rows, minlength=len(x)) / max(len(rows), 1) for rows in row_sets], axis=1)
    shifted_mean = weights.T @ centred
    variance = np.maximum(weights.T @ (centred * centred) - shifted_mean ** 2, 0.0)
    mean, std = shifted_mean + center, np.sqrt(variance)
    return mean, np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0), 1.0, std)


def _preconditioners(x: np.ndarray, lambdas: np.ndarray) -> torch.Tensor:
    """(Cs, dim, dim) symmetric ``(0.25 Cov + lambda I)^(-1/2)`` of the globally standardised features."""
    std = x.std(axis=0)
    standardised = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    covariance = standardised.T @ standardised / max(len(x), 1)
    eigenvalues, vectors = np.linalg.eigh(covariance)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    blocks = [(vectors * (0.25 * eigenvalues + lam) ** -0.5) @ vectors.T for lam in lambdas]
    return torch.from_numpy(np.stack(blocks))


def fit_logistic_problems(x: np.ndarray, y: np.ndarray, row_sets: Sequence[np.ndarray], c_values: Sequence[float],
                          num_classes: int, *, max_iter: int = MAX_ITERATIONS,
                          tolerance: float = GRADIENT_TOLERANCE) -> LinearModels:
    """Fit one standardised L2 logistic regression per (row set, C), all in one batched L-BFGS run.

    ``x`` (n, dim) raw features; ``y`` (n,) class indices in ``0..num_classes-1``; every row set
    indexes ``x`` (and must hold at least two classes for a meaningful fit, as scikit-learn needs).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    sets, cs, dim = len(row_sets), len(c_values), x.shape[1]
    outputs = 1 if num_classes == 2 else num_classes
    mean, scale = set_statistics(x, row_sets)
    counts = np.array([len(rows) for rows in row_sets], dtype=np.float64)
    c_array = np.asarray(c_values, dtype=np.float64)
    lambdas = 1.0 / (c_array[None, :] * counts[:, None])  # (sets, Cs): scikit-learn's 1 / (C n)
    row_weight = np.zeros((len(x), sets))
    for s, rows in enumerate(row_sets):
        row_weight[rows, s] = 1.0 / counts[s]
    used = np.flatnonzero(row_weight.any(axis=1))  # rows no problem trains on cost nothing
    precondition = _preconditioners(x[used], 1.0 / (c_array * counts.mean()))  # (Cs, dim, dim)
    features = torch.from_numpy(x[used])
    row_weight_t = torch.from_numpy(row_weight[used])  # (n, sets)
    targets = torch.from_numpy(y[used])
    if outputs == 1:
        target_values = targets.double()[:, None]  # (n, 1)
    else:
        one_hot = torch.nn.functional.one_hot(targets, num_classes).double()[:, None, :]  # (n, 1, K)
    shift = torch.from_numpy(mean / scale)  # (sets, dim)
    inverse_scale = torch.from_numpy(1.0 / scale)
    lambdas_t = torch.from_numpy(lambdas)

    size = dim * outputs + outputs  # one problem's parameters: preconditioned weights, then bias

    features_t = features.t().contiguous()  # X^T for the gradient's product, laid out for it
    problems = sets * cs
    everyone = torch.arange(problems)
    set_of, c_of = everyone // cs, everyone % cs  # problem p = (row set p // Cs, C index p % Cs)
    weight_per_problem = row_weight_t[:, :, None].expand(-1, sets, cs).reshape(len(used), problems)
    weighted_targets = weight_per_problem * target_values if outputs == 1 else None
    lambda_per_problem = lambdas_t.reshape(-1)

    def evaluate(theta: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The objectives (k,) and gradients (k, size) of the problems ``chosen`` (k indices), at
        their parameters ``theta`` (k, size), by hand (chain rule through the standardisation and
        the preconditioner; no autograd graph). Only those problems are computed: most of them stop
        long before the slowest, and a backtracking step concerns only the few still searching."""
        k, whole = len(chosen), len(chosen) == problems
        sets_k = set_of[chosen]
        u = theta[:, :dim * outputs].reshape(k, dim, outputs)
        b = theta[:, dim * outputs:]  # (k, outputs)
        w = weights_of(u, chosen)  # standardised-space weights (k, dim, outputs)
        scale_k, shift_k, lambda_k = inverse_scale[sets_k], shift[sets_k], lambda_per_problem[chosen]
        raw = (w * scale_k[:, :, None]).permute(1, 0, 2).reshape(dim, k * outputs)
        bias = b - torch.einsum("kd,kdo->ko", shift_k, w)
        logits = torch.addmm(bias.reshape(1, -1), features, raw).view(-1, k, outputs)
        row_weights = weight_per_problem if whole else weight_per_problem[:, chosen]
        # (n, k) passes dominate once the products are batched: in-place where a value is not reused
        if outputs == 1:
            z = logits[..., 0]
            targets_k = weighted_targets if whole else weighted_targets[:, chosen]
            # weighted sum of softplus(z) - y z per problem; dloss/dlogit = sigmoid(z) - y
            values = torch.nn.functional.softplus(z).mul_(row_weights).sum(dim=0) - (z * targets_k).sum(dim=0)
            residual = torch.sigmoid(z).sub_(target_values).mul_(row_weights)[..., None]  # (n, k, 1)
        else:
            log_norm = torch.logsumexp(logits, dim=-1)
            values = ((log_norm - (logits * one_hot).sum(-1)) * row_weights).sum(dim=0)
            residual = (torch.exp(logits - log_norm[..., None]) - one_hot) * row_weights[..., None]
        values = values + 0.5 * lambda_k * w.square().sum(dim=(1, 2))
        grad_bias = residual.sum(dim=0)  # (k, outputs)
        grad_raw = (features_t @ residual.reshape(len(used), -1)).view(dim, k, outputs).permute(1, 0, 2)
        grad_w = grad_raw * scale_k[:, :, None] - shift_k[:, :, None] * grad_bias[:, None, :]
        grad_w = grad_w + lambda_k[:, None, None] * w
        grad_u = weights_of(grad_w, chosen)  # the preconditioner is symmetric
        return values, torch.cat([grad_u.reshape(k, -1), grad_bias], dim=1)

    def weights_of(u_value: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """``precondition[c] @ u[p]`` for each chosen problem p (with its C index c): one batched
        product per C over every problem at once (an einsum broadcasting the (dim, dim) blocks over
        the row sets was 100x slower), else one product per C over the chosen problems with that C."""
        k = len(u_value)
        if k == problems:  # problems are ordered row set first, C second
            stacked = u_value.view(sets, cs, dim, outputs).permute(1, 2, 0, 3).reshape(cs, dim, sets * outputs)
            product = torch.bmm(precondition, stacked).view(cs, dim, sets, outputs)
            return product.permute(2, 0, 1, 3).reshape(k, dim, outputs)
        out = torch.empty_like(u_value)
        chosen_c = c_of[chosen]
        for c in torch.unique(chosen_c).tolist():
            rows = torch.nonzero(chosen_c == c).squeeze(1)
            block = u_value[rows].permute(1, 0, 2).reshape(dim, -1)  # (dim, m * outputs)
            out[rows] = (precondition[c] @ block).view(dim, len(rows), outputs).permute(1, 0, 2)
        return out

    theta, iterations = batched_lbfgs(evaluate, torch.zeros(sets * cs, size, dtype=torch.float64),
                                      max_iter=max_iter, tolerance=tolerance)
    with torch.no_grad():
        weights = weights_of(theta[:, :dim * outputs].reshape(problems, dim, outputs), everyone)
        weights = weights.reshape(sets, cs, dim, outputs).numpy().copy()
        bias_values = theta[:, dim * outputs:].reshape(sets, cs, outputs).numpy().copy()
    return LinearModels(weights, bias_values, mean, scale, tuple(float(c) for c in c_values), iterations)


def batched_lbfgs(evaluate: Any, theta: torch.Tensor, *, max_iter: int, tolerance: float,
                  history: int = 10) -> tuple[torch.Tensor, int]:
    """Minimise P independent smooth convex objectives at once: L-BFGS with a history, a
    step length and a stopping test per problem (row of ``theta``).
    ``evaluate(theta_k, chosen) -> (values (k,), gradients (k, size))`` for the problems ``chosen``
    (k indices into the rows) at ``theta_k`` (k, size): each trial step evaluates only the problems
    still moving and, while backtracking, only those whose step is not yet accepted. A problem
    stops moving once its largest gradient entry is below ``tolerance``; returns the iterate and
    the number of iterations."""
    everyone = torch.arange(len(theta))
    values, gradient = evaluate(theta, everyone)
    s_history: list[torch.Tensor] = []
    y_history: list[torch.Tensor] = []
    rho_history: list[torch.Tensor] = []
    iteration = 0
    for iteration in range(1, max_iter + 1):
        active = gradient.abs().amax(dim=1) > tolerance
        if not bool(active.any()):
            return theta, iteration - 1
        direction = -_two_loop(gradient, s_history, y_history, rho_history)
        slope = (gradient * direction).sum(dim=1)
        uphill = slope >= 0  # lost curvature information: fall back to steepest descent
        direction[uphill] = -gradient[uphill]
        slope = torch.where(uphill, -(gradient * gradient).sum(dim=1), slope)
        direction[~active] = 0.0
        trial, new_values, new_gradient = theta.clone(), values.clone(), gradient.clone()  # the stopped stay
        searching = everyone[active]
        step = torch.ones(len(searching), dtype=theta.dtype)
        for _ in range(30):  # backtracking (Armijo), each problem on its own step length
            candidate = theta[searching] + step[:, None] * direction[searching]
            candidate_values, candidate_gradient = evaluate(candidate, searching)
            fine = candidate_values <= values[searching] + 1e-4 * step * slope[searching]
            accepted = searching[fine]
            trial[accepted], new_values[accepted], new_gradient[accepted] = \
                candidate[fine], candidate_values[fine], candidate_gradient[fine]
            searching, step = searching[~fine], 0.5 * step[~fine]
            if not len(searching):
                break
        # problems still searching after 30 halvings found no decrease: they stay where they were
        s_step, y_step = trial - theta, new_gradient - gradient
        curvature = (s_step * y_step).sum(dim=1)
        rho = torch.where(curvature > 1e-12, 1.0 / curvature.clamp(min=1e-12), torch.zeros_like(curvature))
        s_history.append(s_step)
        y_history.append(y_step)
        rho_history.append(rho)
        if len(s_history) > history:
            s_history.pop(0), y_history.pop(0), rho_history.pop(0)
        theta, values, gradient = trial, new_values, new_gradient
    return theta, iteration


def _two_loop(gradient: torch.Tensor, s_history: list[torch.Tensor], y_history: list[torch.Tensor],
              rho_history: list[torch.Tensor]) -> torch.Tensor:
    """The L-BFGS two-loop recursion, per problem: approximately H^-1 @ gradient."""
    q = gradient.clone()
    alphas = []
    for s_step, y_step, rho in zip(reversed(s_history), reversed(y_history), reversed(rho_history)):
        alpha = rho * (s_step * q).sum(dim=1)
        q -= alpha[:, None] * y_step
        alphas.append(alpha)
    if s_history:
        s_step, y_step, rho = s_history[-1], y_history[-1], rho_history[-1]
        yy = (y_step * y_step).sum(dim=1)
        gamma = torch.where((rho > 0) & (yy > 0), 1.0 / (rho * yy).clamp(min=1e-30), torch.ones_like(yy))
        q *= gamma[:, None]
    for (s_step, y_step, rho), alpha in zip(zip(s_history, y_history, rho_history), reversed(alphas)):
        beta = rho * (y_step * q).sum(dim=1)
        q += (alpha - beta)[:, None] * s_step
    return q
