// Browser check of the /docs page: headless Chromium loads it, authorises with an API key, runs
// "Try it out" on GET /v1/models and expects a 200, and checks that the page fetched nothing from
// another origin (no CDN).
//
//   cd tools && npm ci                       # playwright-core only; it downloads no browser
//   apt-get install -y chromium              # the browser it drives (or set CHROMIUM=/path/to/chrome)
//   ONNXPLAIN_URL=http://127.0.0.1:8000 ONNXPLAIN_API_KEY=onx_... node tools/docs_check.mjs
//
// Prints one JSON line ({"ok": true, ...}) and exits 0 when every step passed, else 1.
import { chromium } from "playwright-core";

const base = (process.env.ONNXPLAIN_URL || "http://127.0.0.1:8000").replace(/\/$/, "");
const key = process.env.ONNXPLAIN_API_KEY || "";
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeout = Number(process.env.DOCS_CHECK_TIMEOUT_MS || 30000);

const report = { ok: false, url: `${base}/docs`, steps: [], foreign_requests: [], status: null };

function step(name) {
  report.steps.push(name);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in a container has no user namespace for Chromium's sandbox.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(timeout);
  const origin = new URL(base).origin;
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(origin) && !url.startsWith("data:") && !url.startsWith("blob:")) {
      report.foreign_requests.push(url);
    }
  });

  await page.goto(`${base}/docs`, { waitUntil: "networkidle" });
  await page.locator(".swagger-ui .info .title").waitFor();
  step("page rendered");

  await page.locator(".swagger-ui .auth-wrapper button.authorize").click();
  await page.locator(".modal-ux input").first().fill(key);
  await page.locator(".modal-ux .auth-btn-wrapper button.authorize").click();
  await page.locator(".modal-ux button.btn-done").click();
  step("authorized");

  const operation = page.locator("#operations-models-listModels");
  await operation.locator(".opblock-summary").first().click();
  await operation.locator("button.try-out__btn").click();
  await operation.locator("button.execute").click();
  step("executed GET /v1/models");

  const status = operation.locator(".live-responses-table tbody .response-col_status").first();
  await status.waitFor();
  report.status = (await status.innerText()).trim();
  report.ok = report.status.startsWith("200") && report.foreign_requests.length === 0;
} catch (error) {
  report.error = String(error && error.message ? error.message : error).split("\n")[0];
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
