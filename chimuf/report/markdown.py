"""Results → Markdown: a pure function of a run's results and the figures it has.

The text lives in `templates/*.j2`, one template per section of the paper plus `report.md.j2`,
which includes them in order. This module builds the one Jinja environment: every filter and
helper the templates use is registered in `environment` (formats and building blocks from
blocks.py, views of the results from views.py), and escaping is the default (escape.py). It
reads results only: every number shown was computed by a stage and saved in results.json.

The Markdown stays within what both pandoc and Quarto read: YAML front matter, ATX headings with
ids, pipe tables, `![caption](path){#fig-id}` figures, emphasis and block quotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chimuf.core.config import flatten
from chimuf.core.errors import ReportError
from chimuf.core.results import Results
from chimuf.report import blocks, claims, glance, views
from chimuf.report.escape import Trusted, finalize, yaml_string
from chimuf.report.figures import ImageRef
from chimuf.report.resources import TEMPLATES_DIR

MAIN_TEMPLATE = "report.md.j2"


# --- the one environment -----------------------------------------------------------------------


def not_run(context: Any, stage: str) -> Trusted:
    """A section's line for a stage without results, saying whether the config switched it off."""
    return blocks.not_run(stage, off=stage in views.switched_off(context["r"]))


def environment(own: Path | None = None) -> Any:
    """The Jinja environment of the report: templates folder (the user's `own` folder first, when
    given: a template there replaces the packaged one of the same name), escaping, every filter and
    helper."""
    import jinja2

    if not (TEMPLATES_DIR / MAIN_TEMPLATE).is_file():
        raise ReportError(
            f"the report templates are missing: expected `{TEMPLATES_DIR / MAIN_TEMPLATE}`. "
            "Reinstall chimuf (its wheel carries them); in a checkout, chimuf/report/templates must be "
            "the link to templates/ (clone with `git config core.symlinks true`)."
        )
    packaged = jinja2.FileSystemLoader(TEMPLATES_DIR)
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(check_own_templates(own)), packaged])
        if own is not None else packaged,
        finalize=finalize,  # every {{ value }} is escaped unless Trusted
        autoescape=False,  # HTML autoescape would be wrong for Markdown; finalize does it
        undefined=jinja2.StrictUndefined,
        # `{#sec-x}` is Markdown (a heading id), so Jinja comments are `{## ... ##}` here.
        comment_start_string="{##",
        comment_end_string="##}",
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        num=blocks.num,
        count=blocks.count,
        counted=blocks.counted,
        interval=blocks.interval,
        with_interval=blocks.with_interval,
        seconds=blocks.seconds,
        plain=blocks.plain,
        hyperparameters=blocks.hyperparameters,
        architecture=blocks.architecture,
        slug=blocks.slug,
        yaml=yaml_string,
        trusted=Trusted,  # the explicit opt-out, for Markdown a template has built itself
    )
    env.globals.update(
        table=blocks.table,
        figure=jinja2.pass_context(blocks.figure),
        not_run=jinja2.pass_context(not_run),
        paper=views.PAPER,
        paper_rows=views.paper_rows,
        trial_table=views.trial_table,
        layer_table=views.layer_table,
        architectures=views.architectures,
        best_training=views.best_training,
        augmentation_pairs=views.augmentation_pairs,
        stage_rows=views.stage_rows,
        config_rows=views.config_rows,
        audit_count_rows=views.audit_count_rows,
        file_rows=views.file_rows,
        duplicate_rows=views.duplicate_rows,
        outside_test=views.outside_test,
        split_rows=views.split_rows,
        training_rows=views.training_rows,
        augmentation_rows=views.augmentation_rows,
        best_rows=views.best_rows,
        suspect_rows=views.suspect_rows,
        search_rows=views.search_rows,
        failed_trial_rows=views.failed_trial_rows,
        hyperparameter_rows=views.hyperparameter_rows,
        confusion_table=views.confusion_table,
        class_rows=views.class_rows,
        imbalance_rows=views.imbalance_rows,
        interval_methods=views.interval_methods,
        threshold_table=views.threshold_table,
        mcnemar_rows=views.mcnemar_rows,
        fold_rows=views.fold_rows,
        difference_rows=views.difference_rows,
        export_rows=views.export_rows,
        beyond_rows=views.beyond_rows,
        beyond_verdict=views.beyond_verdict,
        candidate_rows=views.candidate_rows,
        chosen_row=views.chosen_row,
        versus_final=views.versus_final,
        file_link=blocks.file_link,
        # what the data support, in words (claims.py), and the first page (glance.py)
        conclusion=claims.conclusion,
        chance_claim=claims.chance_claim,
        small_splits=claims.small_splits,
        small_data_claim=claims.small_data_claim,
        best_training_claim=claims.best_training_claim,
        augmentation_claims=claims.augmentation_claims,
        final_claim=claims.final_claim,
        paper_claim=claims.paper_claim,
        glance_rows=glance.glance_rows,
        status_text=glance.status_text,
        environment_rows=views.environment_rows,
        dependency_list=views.dependency_list,
    )
    return env


def check_own_templates(folder: Path) -> Path:
    """The user's templates folder (report.templates), which must exist."""
    if not folder.is_dir():
        raise ReportError(f"report.templates names `{folder}`, which is not a folder; make it a folder of "
                          ".j2 templates named as the packaged ones (templates/), or set it to ''")
    return folder


def own_templates(results: Results) -> Path | None:
    """The run's report.templates folder, absolute (relative to the working directory); None if unset."""
    value = results.run.config.get("report", {}).get("templates", "") if results.run.config else ""
    return Path(value).expanduser().resolve() if value else None


def render_markdown(results: Results, images: Mapping[str, ImageRef], own: Path | None = None) -> str:
    """The whole report as Markdown; `images` maps a figure path in results.json to its ref; `own`
    is a folder of the user's templates layered over the packaged ones.

    A figure of results.json without an entry in `images` is named in the text as missing.
    """
    template = environment(own).get_template(MAIN_TEMPLATE)
    return template.render(
        r=results,
        images=images,
        classes=views.class_names(results),
        config=flatten(results.run.config),
        missing=views.missing_stages(results),
    )
