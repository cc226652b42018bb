// Drives the page of `jfdeploy serve` in Debian's Chromium (playwright-core: no browser download).
//   node page_check.mjs URL VIDEO MASK SCREENSHOT POINTS_JSON [TIMEOUT_MS]
// Picks the files, starts, waits for "done", screenshots, and prints one JSON line: the status, the frame
// count, and the RGBA of the #first and #view canvases at each [x, y] of POINTS_JSON.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, video, mask, screenshot, pointsJson, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 60000);
const profile = mkdtempSync(join(tmpdir(), "jfdeploy-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = browser.pages()[0] || (await browser.newPage());
  const console_ = [];
  page.on("console", (message) => console_.push(message.text()));
  await page.goto(url, { timeout });
  await page.setInputFiles("#video", video);
  await page.setInputFiles("#mask", mask);
  await page.click("#start");
  await page.waitForFunction(() => {
    const status = document.getElementById("status");
    return status.dataset.frames !== undefined || status.className === "error";
  }, null, { timeout });
  await page.screenshot({ path: screenshot, fullPage: true });
  const result = await page.evaluate((points) => {
    const read = (id) => {
      const canvas = document.getElementById(id);
      const context = canvas.getContext("2d");
      return points.map(([x, y]) => Array.from(context.getImageData(x, y, 1, 1).data));
    };
    const status = document.getElementById("status");
    return { status: status.textContent, error: status.className === "error", frames: Number(status.dataset.frames),
             first: read("first"), view: read("view"),
             size: [document.getElementById("view").width, document.getElementById("view").height] };
  }, JSON.parse(pointsJson));
  console.log(JSON.stringify({ ...result, console: console_ }));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
