/**
 * The convergence plot of a tune-skip run: best objective so far against trial number, coloured by
 * phase (the random initial design, then Bayesian optimisation), each trial's own value as dots.
 * Drawn by Vega-Lite (compiled to Vega, rendered headless to SVG), not hand-written markup.
 */
import * as vega from "vega";
import { compile } from "vega-lite";
import type { Trial } from "./trials_log.ts";

export async function convergenceSvg(trials: Trial[], title: string): Promise<string> {
  let best = -Infinity;
  const values = trials.map((t) => {
    best = Math.max(best, t.value);
    return { trial: t.trial + 1, value: t.value, best, phase: t.phase };
  });
  const spec = compile({
    title,
    width: 560,
    height: 320,
    data: { values },
    layer: [
      {
        mark: { type: "point", filled: true, opacity: 0.5 },
        encoding: {
          x: { field: "trial", type: "quantitative", title: "trial" },
          y: { field: "value", type: "quantitative", title: "speed-up over plain decoding" },
          color: { field: "phase", type: "nominal", title: "phase" },
        },
      },
      {
        mark: { type: "line", interpolate: "step-after", color: "black" },
        encoding: {
          x: { field: "trial", type: "quantitative" },
          y: { field: "best", type: "quantitative" },
        },
      },
    ],
  }).spec;
  const view = new vega.View(vega.parse(spec), { renderer: "none" });
  return await view.toSVG();
}
