"""hypd's generation strategy for Ax (`algorithm = "ax"`): what it is, and why.

hypd asks Ax for one trial each time a GPU frees, with the other trials of the study still
running (asynchronous), and a trial that waits for a model is a GPU left idle. Ax's own
default (`Client.configure_generation_strategy(method="fast")`) is built for a loop that
asks, runs and tells; hypd's strategy is that default with these changes:

- **Initialisation never blocks a GPU.** Ax's default pauses after its 5 initial points
  until results arrive; hypd's keeps proposing quasi-random (Sobol) points while it waits,
  and moves to the model as soon as 2 results are in (Ax's own threshold) and the 5
  initial points have been proposed.

- **Every value of a choice is seen before the model decides.** How Ax gets stuck on a
  choice value (measured: `bench/search_quality.py --problems mixed`; the investigation
  is in the README's "Search quality" section):
  - Ax's model (`BOTORCH_MODULAR`) one-hot encodes an unordered choice: a 3-way choice is
    three 0/1 inputs of one GP with one kernel over all inputs, so what it learns of the
    other parameters (the best learning rate) is shared between the choice's values.
    When the best learning rate depends on the optimiser, the values that were only tried
    with a learning rate good for another one look worse everywhere, and the acquisition
    (which enumerates or searches the discrete part exactly: `optimize_acqf_mixed` or its
    alternating variant, never a rounded relaxation) rightly finds no improvement there.
    Pending trials make it worse: they are fantasised at the model's mean, so three
    running trials on the leading value pull the next one there too.
  - Five Sobol points cover a 3-way choice badly: a value seen once, with a bad setting of
    the rest, is judged on that one point.
  - hypd therefore (1) starts with enough Sobol points that each value of the widest
    unordered choice is drawn about twice (`initial_trials`), and (2) models unordered
    choices with Ax's mixed GP (`BO_MIXED`: a categorical kernel, summed with and
    multiplied by the continuous one), which learns an offset per value and, through the
    product, a shape per value, instead of one shape for all.

- **The acquisition looks near the best trials too** (`sample_around_best`): BoTorch's
  optimiser starts from random points and from perturbations of the best trials so far,
  so the model's small improvements next to the incumbent are found, not only far ones.

Everything here is Ax's own classes, configured: the strategy is stored in Ax's JSON
snapshot with the experiment and restored from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Sobol points before the model, at least (the centre of the space counts as one).
INITIAL_TRIALS = 5
#: Results the model needs before it proposes (Ax's default for 5 initial trials).
MIN_OBSERVED = 2
#: Sobol points per value of the widest unordered choice.
POINTS_PER_CHOICE_VALUE = 2
#: No more Sobol points than this before the model, however wide a choice.
MAX_INITIAL_TRIALS = 16


def initial_trials(unordered_choice_sizes: Sequence[int]) -> int:
    """How many trials (the centre included) come before the model."""
    widest = max(unordered_choice_sizes, default=0)
    return min(MAX_INITIAL_TRIALS, max(INITIAL_TRIALS, POINTS_PER_CHOICE_VALUE * widest))


def generation_strategy(seed: int | None, unordered_choice_sizes: Sequence[int], continuous: bool) -> Any:
    """The Ax GenerationStrategy for a study: centre, Sobol, then the GP (see above).
    `continuous`: every searched parameter is a continuous range (Ax then optimises the
    acquisition with `optimize_acqf`, the one optimiser that samples around the best)."""
    from ax.adapter.registry import Generators  # noqa: TID251
    from ax.core.trial_status import TrialStatus  # noqa: TID251
    from ax.generation_strategy.generation_node import GenerationNode  # noqa: TID251
    from ax.generation_strategy.generation_strategy import GenerationStrategy  # noqa: TID251
    from ax.generation_strategy.generator_spec import GeneratorSpec  # noqa: TID251
    from ax.generation_strategy.transition_criterion import MinTrials  # noqa: TID251
    from ax.generators.torch.botorch_modular.surrogate import ModelConfig, SurrogateSpec  # noqa: TID251

    sobol = GenerationNode(
        name="Sobol",
        generator_specs=[GeneratorSpec(generator_enum=Generators.SOBOL, generator_kwargs={"seed": seed})],
        transition_criteria=[
            # Both must hold. The centre counts (use_all_trials_in_exp); failed and
            # abandoned trials do not, so they are made up with more Sobol points.
            MinTrials(threshold=initial_trials(unordered_choice_sizes), transition_to="MBM",
                      use_all_trials_in_exp=True,
                      not_in_statuses=[TrialStatus.FAILED, TrialStatus.ABANDONED]),
            MinTrials(threshold=MIN_OBSERVED, transition_to="MBM", use_all_trials_in_exp=True,
                      only_in_statuses=[TrialStatus.COMPLETED], count_only_trials_with_data=True),
        ],
        # No pausing criterion: while results are awaited, more Sobol points.
        should_deduplicate=True,
    )
    model = GenerationNode(
        name="MBM",
        generator_specs=[GeneratorSpec(
            generator_enum=Generators.BOTORCH_MODULAR,
            generator_kwargs={"surrogate_spec": SurrogateSpec(model_configs=[ModelConfig(name="hypd")])},
            generator_gen_kwargs={"model_gen_options": {"optimizer_kwargs": {
                "options": {"sample_around_best": True}}}} if continuous else {},
        )],
        should_deduplicate=True,
    )
    return GenerationStrategy(name="hypd:Sobol+MBM", nodes=[sobol, model])
