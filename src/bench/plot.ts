/**
 * `bench --plot FILE.svg`: tokens/s per mode for each model (bars at the median, a rule from min
 * to max), and the histogram of tokens emitted per speculative round. Vega-Lite, rendered headless.
 */
import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import type { BenchReport } from "./report.ts";

export function benchPlotSpec(report: BenchReport): TopLevelSpec {
  const short = (model: string) => model.split("/").pop()!;
  const speeds = report.models.flatMap((m) =>
    m.modes.map((f) => ({
      model: short(m.model),
      mode: f.mode,
      median: f.tokensPerSecond.median,
      min: f.tokensPerSecond.min,
      max: f.tokensPerSecond.max,
    }))
  );
  const rounds = report.models.flatMap((m) =>
    m.modes.flatMap((f) =>
      (f.tokensPerRoundHistogram ?? []).map((b) => ({
        model: short(m.model),
        mode: f.mode,
        tokens: b.value,
        rounds: b.count,
      }))
    )
  );
  const charts: TopLevelSpec[] = [{
    title: "tokens/s per mode (bar: median, rule: min..max)",
    data: { values: speeds },
    facet: { column: { field: "model", type: "nominal", title: null } },
    spec: {
      width: 160,
      height: 200,
      layer: [
        {
          mark: "bar",
          encoding: {
            x: { field: "mode", type: "nominal", title: null, sort: null },
            y: { field: "median", type: "quantitative", title: "tokens/s" },
            color: { field: "mode", type: "nominal", legend: null },
          },
        },
        {
          mark: { type: "rule", color: "black" },
          encoding: {
            x: { field: "mode", type: "nominal", sort: null },
            y: { field: "min", type: "quantitative" },
            y2: { field: "max" },
          },
        },
      ],
    },
  } as TopLevelSpec];
  if (rounds.length) {
    charts.push({
      title: "tokens emitted per speculative round",
      data: { values: rounds },
      facet: { column: { field: "model", type: "nominal", title: null } },
      spec: {
        width: 160,
        height: 160,
        mark: "bar",
        encoding: {
          x: { field: "tokens", type: "ordinal", title: "tokens per round" },
          xOffset: { field: "mode", type: "nominal" },
          y: { field: "rounds", type: "quantitative", title: "rounds" },
          color: { field: "mode", type: "nominal" },
        },
      },
    } as TopLevelSpec);
  }
  return { vconcat: charts } as unknown as TopLevelSpec;
}

export async function benchPlotSvg(report: BenchReport): Promise<string> {
  const spec = compile(benchPlotSpec(report)).spec;
  return await new vega.View(vega.parse(spec), { renderer: "none" }).toSVG();
}
