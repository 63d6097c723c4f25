// The per-chunk telemetry chart, drawn on a <canvas> with no library.
// Top: drift severity against the policy's adaptive threshold; red triangles where a prune triggered, purple
// digits for regenerations, green lines where a prompt change took effect. Bottom: the chunk's latency (denoise,
// decode, encode, prompt change) against its real-time budget (its frames at the session's rate), the scheduler's
// queue wait stacked in grey, and red ticks where the gateway's playout buffer ran dry (a stall).
"use strict";

const COLORS = {
  severity: "#2563eb", threshold: "#f59e0b", prune: "#dc2626", regen: "#7c3aed", prompt: "#16a34a",
  latency: "#0ea5e9", queue: "#9ca3af", budget: "#111827", stall: "#dc2626", grid: "#e5e7eb", text: "#4b5563",
};

class TelemetryChart {
  constructor(canvas, legend) {
    this.canvas = canvas;
    this.points = [];   // one record per chunk, as the gateway sent it
    this.stalls = [];   // chunk positions (fractional) where playout stalled
    this.fps = 16;
    legend.innerHTML = [
      ["severity", "drift severity"], ["threshold", "threshold"], ["prune", "prune"], ["regen", "regenerations"],
      ["prompt", "prompt change"], ["latency", "chunk latency"], ["queue", "queue wait"], ["budget", "real-time budget"],
      ["stall", "playout stall"],
    ].map(([key, text]) => `<span style="--swatch:${COLORS[key]}">${text}</span>`).join("");
    this.draw();
  }

  reset(fps) {
    this.points = [];
    this.stalls = [];
    this.fps = fps || 16;
    this.draw();
  }

  add(chunk) {
    this.points.push(chunk);
    this.draw();
  }

  stall() {
    this.stalls.push(Math.max(this.points.length - 1, 0));
    this.draw();
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const css = this.canvas.getBoundingClientRect();
    const width = Math.max(css.width, 320), height = width * 0.47;
    if (this.canvas.width !== Math.round(width * ratio)) {
      this.canvas.width = Math.round(width * ratio);
      this.canvas.height = Math.round(height * ratio);
    }
    const g = this.canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = "11px system-ui, sans-serif";
    const left = 44, right = width - 10, split = height * 0.55;
    const top = { y0: 14, y1: split - 16 }, bottom = { y0: split + 10, y1: height - 20 };
    const n = Math.max(this.points.length, 8);
    const x = (i) => left + (right - left) * (i + 0.5) / n;

    const severities = this.points.flatMap((p) => [p.report.severity, p.report.threshold]).filter((v) => v != null);
    const sevMax = Math.max(1e-6, ...severities) * 1.15;
    const latencies = this.points.map((p) => this.latency(p) + (p.timings.queue_wait_seconds || 0));
    const budgets = this.points.map((p) => p.frame_count / this.fps);
    const latMax = Math.max(0.1, ...latencies, ...budgets) * 1.15;

    this.axes(g, top, left, right, sevMax, "severity");
    this.axes(g, bottom, left, right, latMax, "seconds");
    const yTop = (v) => top.y1 - (top.y1 - top.y0) * v / sevMax;
    const yBottom = (v) => bottom.y1 - (bottom.y1 - bottom.y0) * v / latMax;

    // Prompt changes: where prompt_version goes up.
    g.strokeStyle = COLORS.prompt; g.setLineDash([4, 3]);
    this.points.forEach((p, i) => {
      if (i > 0 && p.prompt_version > this.points[i - 1].prompt_version) {
        const px = x(i) - (x(1) - x(0)) / 2;
        g.beginPath(); g.moveTo(px, top.y0); g.lineTo(px, bottom.y1); g.stroke();
      }
    });
    g.setLineDash([]);

    this.line(g, this.points.map((p, i) => [x(i), p.report.threshold == null ? null : yTop(p.report.threshold)]),
      COLORS.threshold, [6, 4]);
    this.line(g, this.points.map((p, i) => [x(i), p.report.severity == null ? null : yTop(p.report.severity)]),
      COLORS.severity, []);
    this.points.forEach((p, i) => {
      if (p.report.triggered) {
        g.fillStyle = COLORS.prune;
        g.beginPath(); g.moveTo(x(i), top.y0 + 9); g.lineTo(x(i) - 5, top.y0); g.lineTo(x(i) + 5, top.y0); g.fill();
      }
      if (p.report.regenerations) {
        g.fillStyle = COLORS.regen; g.textAlign = "center";
        g.fillText(String(p.report.regenerations), x(i), top.y0 + 20);
      }
    });

    // Latency bars, queue wait stacked under them, and each chunk's real-time budget.
    const bar = Math.max(2, (right - left) / n * 0.6);
    this.points.forEach((p, i) => {
      const queue = p.timings.queue_wait_seconds || 0, work = this.latency(p);
      g.fillStyle = COLORS.queue;
      g.fillRect(x(i) - bar / 2, yBottom(queue), bar, bottom.y1 - yBottom(queue));
      g.fillStyle = COLORS.latency;
      g.fillRect(x(i) - bar / 2, yBottom(queue + work), bar, yBottom(queue) - yBottom(queue + work));
      g.strokeStyle = COLORS.budget;
      g.beginPath(); g.moveTo(x(i) - bar / 2 - 2, yBottom(budgets[i])); g.lineTo(x(i) + bar / 2 + 2, yBottom(budgets[i]));
      g.stroke();
    });
    g.strokeStyle = COLORS.stall; g.lineWidth = 2;
    this.stalls.forEach((i) => { g.beginPath(); g.moveTo(x(i), bottom.y1); g.lineTo(x(i), bottom.y1 - 12); g.stroke(); });
    g.lineWidth = 1;

    g.fillStyle = COLORS.text; g.textAlign = "center";
    const step = Math.ceil(n / 10);
    for (let i = 0; i < n; i += step) g.fillText(String(i), x(i), height - 6);
  }

  latency(p) {
    const t = p.timings;
    return (t.denoise_seconds || 0) + (t.decode_seconds || 0) + (t.encode_seconds || 0) + (t.prompt_change_seconds || 0);
  }

  axes(g, box, left, right, max, label) {
    g.strokeStyle = COLORS.grid; g.fillStyle = COLORS.text; g.textAlign = "right";
    for (let k = 0; k <= 2; k++) {
      const v = max / 1.15 * k / 2, y = box.y1 - (box.y1 - box.y0) * (v / max);
      g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
      g.fillText(v < 10 ? v.toFixed(2) : v.toFixed(0), left - 4, y + 4);
    }
    g.save(); g.translate(10, (box.y0 + box.y1) / 2); g.rotate(-Math.PI / 2); g.textAlign = "center";
    g.fillText(label, 0, 0); g.restore();
  }

  line(g, points, color, dash) {
    g.strokeStyle = color; g.lineWidth = 2; g.setLineDash(dash); g.beginPath();
    let drawing = false;
    for (const [px, py] of points) {
      if (py == null) { drawing = false; continue; }
      if (drawing) g.lineTo(px, py); else g.moveTo(px, py);
      drawing = true;
      g.fillStyle = color; g.fillRect(px - 1.5, py - 1.5, 3, 3);
    }
    g.stroke(); g.setLineDash([]); g.lineWidth = 1;
  }
}
