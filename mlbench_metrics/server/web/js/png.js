// A chart saved as a PNG image: its title, the plot as uPlot drew it (axes included), and a
// legend of its visible lines, on a white background; downloaded without leaving the page.

import { el } from "./dom.js";

/** Download the uPlot `u` as `<title>.png`, headed by `heading`. */
export function savePng(u, heading, title) {
  const canvas = u.ctx.canvas;
  const ratio = canvas.width / (u.width || canvas.width);
  const series = u.series.slice(1).filter((sp, i) => {
    const row = u.root.querySelectorAll(".u-legend .u-series")[i + 1];
    return !(row && row.style.display === "none");
  });
  const rowH = 18 * ratio;
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height + 30 * ratio + rowH * series.length + 8 * ratio;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.fillStyle = "#1b1f24";
  ctx.font = `600 ${14 * ratio}px sans-serif`;
  ctx.fillText(heading, 8 * ratio, 20 * ratio);
  ctx.drawImage(canvas, 0, 30 * ratio);
  ctx.font = `${12 * ratio}px sans-serif`;
  series.forEach((sp, i) => {
    const top = canvas.height + 30 * ratio + i * rowH + 4 * ratio;
    ctx.fillStyle = typeof sp.stroke === "function" ? sp.stroke(u, i + 1) : sp.stroke || "#000";
    ctx.fillRect(8 * ratio, top + 4 * ratio, 14 * ratio, 4 * ratio);
    ctx.fillStyle = "#1b1f24";
    ctx.fillText(String(sp.label), 28 * ratio, top + 10 * ratio);
  });
  const name = title.replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 80) || "chart";
  out.toBlob((blob) => {
    if (!blob) return;
    const link = el("a", { href: URL.createObjectURL(blob), download: name + ".png" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, "image/png");
}
