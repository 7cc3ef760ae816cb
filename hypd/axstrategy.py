"""hypd's generation strategy for Ax (`algorithm = "ax"`): what it is, and why.

hypd asks Ax for one trial each time a GPU frees, with the other trials of the study still
running (asynchronous), and a trial that waits for a model is a GPU left idle. Ax's own
default (`Client.configure_generation_strategy(method="fast")`) is built for a loop that
asks, runs and tells; hypd's strategy is that default with these changes:

- **Initialisation never blocks a GPU.** Ax's default pauses after its 5 initial points
  until results arrive; hypd's keeps proposing quasi-random (Sobol) points while it waits,
  and moves to the model as soon as 2 results are in (Ax's own threshold) and the initial
  design has been proposed.

- **Every value of a choice is tried, twice, before the model decides.** Why Ax gets stuck
  on a wrong choice value, found by reading what its default does with a choice and
  measuring it (`bench/search_quality.py --problems mixed`, README "Search quality"):
  - Initial points: Ax's 5 (the centre, then Sobol) cover a 3-way choice badly. Sobol
    draws the choice as a number in [0, 1) cut into k slices, and 5 or 6 points are far too
    few for its balance to show: one run had 4 of 6 on one value, 1 on each other. A value
    seen once, with a bad learning rate, is judged on that one point.
  - Encoding: the model (`BOTORCH_MODULAR`) one-hot encodes an unordered choice (three 0/1
    inputs of one GP, one kernel over all inputs), so what it learns of the other
    parameters, the best learning rate say, is shared between the choice's values. When
    the best learning rate depends on the optimiser, a value tried only with another
    value's good learning rate looks worse everywhere.
  - The acquisition's optimiser is not the cause: over a one-hot choice Ax enumerates the
    values (`optimize_acqf_mixed`) or searches them exactly (its alternating variant for
    integer ranges), never a rounded relaxation; and pending trials enter the acquisition
    jointly (qLogNEI's `X_pending`), not as made-up results.
  - Ax's categorical GP (`BO_MIXED`, which learns a shape per value) would answer the
    encoding, but one ask took 33-68 s on the mixed space (2 busy cores): a GPU would wait
    on it. Not used.
  - So hypd's first trials are its own Latin hypercube (hypd/design.py), attached to Ax:
    every choice value dealt out evenly, twice or more for a choice of up to 8 values
    (`initial_trials`: at least 5, 2 per value of the widest unordered choice, at most 16),
    and every range cut into one slice per trial. The model starts from a fair sample of
    each value.

- **The acquisition looks near the best trials too** (`sample_around_best`, on spaces of
  continuous ranges, the only ones whose optimiser takes it): BoTorch's optimiser starts
  from random points and from perturbations of the best trials so far, so the small
  improvements next to the incumbent are found, not only far ones.

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
    """The Ax GenerationStrategy for a study, after hypd's initial design: Sobol while
    results are awaited, then the GP (see above).
    `continuous`: every searched parameter is a continuous range (Ax then optimises the
    acquisition with `optimize_acqf`, the one optimiser that samples around the best)."""
    from ax.adapter.registry import Generators  # noqa: TID251
    from ax.core.trial_status import TrialStatus  # noqa: TID251
    from ax.generation_strategy.center_generation_node import CenterGenerationNode  # noqa: TID251
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
    if unordered_choice_sizes:  # hypd's design comes first (AxSuggester attaches it)
        return GenerationStrategy(name="hypd:Design+Sobol+MBM", nodes=[sobol, model])
    center = CenterGenerationNode(next_node_name="Sobol", use_existing_trials_for_initialization=True)
    return GenerationStrategy(name="hypd:Center+Sobol+MBM", nodes=[center, sobol, model])
