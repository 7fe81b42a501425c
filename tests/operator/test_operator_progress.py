"""Stall detection input: polling a stage pod's /progress (the exporter of alignops.metrics.workload)."""

import asyncio

import aiohttp
from aiohttp import web

from alignops.operator.progress import fetch_progress, parse_progress


def test_parse_progress_measures_staleness_on_the_pods_clock():
    # lastProgressTime 1000, the pod's now 1090: 90 s without a step, whatever our clock says
    progress = parse_progress({"step": 40, "totalSteps": 100, "lastProgressTime": 1000.0, "now": 1090.0})
    assert (progress.step, progress.stale_seconds) == (40, 90.0)
    assert parse_progress({"step": None, "lastProgressTime": 5, "now": 5}).step is None
    assert parse_progress({"step": 3}) is None


def test_fetch_progress_from_a_server_and_from_nothing():
    async def main():
        async def progress(request):
            return web.json_response({"step": 7, "lastProgressTime": 10.0, "now": 12.5})

        app = web.Application()
        app.router.add_get("/progress", progress)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                answer = await fetch_progress(session, "127.0.0.1", port)
                await runner.cleanup()
                gone = await fetch_progress(session, "127.0.0.1", port)
        finally:
            await runner.cleanup()
        return answer, gone

    answer, gone = asyncio.run(main())
    assert (answer.step, answer.stale_seconds) == (7, 2.5)
    assert gone is None
