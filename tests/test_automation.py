"""The automation conditions of pipelines/automation.py, evaluated by Dagster's own evaluator on the code location's
real asset graph, tick by tick, as upstream materializations land (tests/test_daemon_loop.py runs them under the
daemon)."""

import datetime
import dagster as dg

MONDAY = datetime.datetime(2026, 12, 7, 1, 0, tzinfo=datetime.timezone.utc)  # two hours before the weekly tick


def load_defs(cron: str | None):
    from pipelines.definitions import definitions

    return definitions(cron=cron)


class Ticks:
    def __init__(self, defs, instance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def __call__(self, when: datetime.datetime) -> dict:
        """{asset: sorted partitions, or '*' unpartitioned} requested by the tick at `when`."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor,
                                                   evaluation_time=when)
        self.cursor = result.cursor
        return {key.to_user_string(): ("*" if partitions == {None} else sorted(partitions))
                for key, partitions in result._requested_partitions_by_asset_key.items()}

    def made(self, *assets: str, partition: str | None = None) -> None:
        for asset in assets:
            self.instance.report_runless_asset_event(dg.AssetMaterialization(asset, partition=partition))


CASCADE = {name: "*" for name in ("base_model", "interpolation_model", "vsr_model", "evaluation", "promoted_model")}


def test_a_batch_flows_to_latents_then_to_weekly_retraining():
    defs = load_defs("0 3 * * 1")
    with dg.instance_for_test() as instance:
        tick = Ticks(defs, instance)
        instance.add_dynamic_partitions("video_batches", ["b1"])
        assert tick(MONDAY) == {}  # a batch registered, nothing curated yet
        tick.made("video_shards", partition="b1")
        # the first shards: the 2D models, once; the batch's latents wait for their encoders
        assert tick(MONDAY + datetime.timedelta(minutes=1)) == {
            "autoencoders": "*", "t2i_model": "*", "upscaler_model": "*"}
        tick.made("autoencoders", "t2i_model", "upscaler_model")
        # past the week's tick: the latents, and not yet the cascade, which waits for them
        assert tick(MONDAY + datetime.timedelta(hours=2, minutes=2)) == {"base_latent_shards": ["b1"],
                                                                           "vsr_latent_shards": ["b1"]}
        tick.made("base_latent_shards", "vsr_latent_shards", partition="b1")
        assert tick(MONDAY + datetime.timedelta(hours=2, minutes=3)) == {}  # they just landed: a tick's wait
        assert tick(MONDAY + datetime.timedelta(hours=2, minutes=4)) == CASCADE  # the whole cascade, in one run
        tick.made(*CASCADE)
        assert tick(MONDAY + datetime.timedelta(days=7, hours=3)) == {}  # a week on, nothing new: no retraining

        instance.add_dynamic_partitions("video_batches", ["b2"])
        tick.made("video_shards", partition="b2")
        later = MONDAY + datetime.timedelta(days=8)
        assert tick(later) == {"base_latent_shards": ["b2"], "vsr_latent_shards": ["b2"]}  # b1's are not redone
        tick.made("base_latent_shards", "vsr_latent_shards", partition="b2")
        assert tick(later + datetime.timedelta(hours=1)) == {}  # the week's tick has been used
        assert tick(later + datetime.timedelta(days=6, hours=3)) == CASCADE


def test_without_a_cron_every_change_of_the_shards_retrains():
    defs = load_defs(None)
    with dg.instance_for_test() as instance:
        tick = Ticks(defs, instance)
        instance.add_dynamic_partitions("video_batches", ["b1"])
        tick.made("autoencoders", "t2i_model", "upscaler_model")
        assert tick(MONDAY) == {}
        tick.made("video_shards", partition="b1")
        assert tick(MONDAY + datetime.timedelta(minutes=1)) == {"base_latent_shards": ["b1"],
                                                                  "vsr_latent_shards": ["b1"]}
        # training waited for the latents, and a tick more once they landed
        tick.made("base_latent_shards", "vsr_latent_shards", partition="b1")
        assert tick(MONDAY + datetime.timedelta(minutes=2)) == {}
        assert tick(MONDAY + datetime.timedelta(minutes=3)) == CASCADE
        tick.made(*CASCADE)
        assert tick(MONDAY + datetime.timedelta(minutes=4)) == {}
