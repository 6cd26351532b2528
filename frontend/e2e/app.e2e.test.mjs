// End to end: `captioner serve` with a tiny model, driven in Debian's headless Chromium.
// Skips when /usr/bin/chromium (or, for the photo test, the Flickr8k photos) is missing.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import {
  CHROMIUM,
  dropFile,
  dropNotAnImage,
  freePort,
  launchChromium,
  paintedPixels,
  PHOTOS,
  photos,
  PYTHON,
  pythonSentence,
  ROOT,
  screenshot,
  serverCaption,
  spawnCaptioner,
  waitForUrl,
} from "./helpers.mjs";

const [photo] = photos(1);

describe("the web page", { skip: !existsSync(CHROMIUM) && `${CHROMIUM} is missing` }, () => {
  let server, context, page, problems, url, work;

  before(async () => {
    work = mkdtempSync(join(tmpdir(), "captioner-e2e-"));
    const model = join(work, "model");
    const made = spawnSync(PYTHON, [join(ROOT, "tests/tiny_model.py"), model], { encoding: "utf8" });
    assert.equal(made.status, 0, made.stderr);
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    server = spawnCaptioner(
      ["serve", "--model", model, "--port", String(port), "--page-dir", join(ROOT, "frontend/dist")],
      { stdio: ["ignore", "ignore", "inherit"] },
    );
    await waitForUrl(`${url}/api/health`, server, 90);
    ({ context, page, problems } = await launchChromium(join(work, "profile")));
  });

  // No console errors or failed requests on load, caption, hover and webcam.
  afterEach(() => problems?.assertNone());

  after(async () => {
    await context?.close();
    server?.kill();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test("a dropped photo is captioned, and hovering a word draws its heatmap", {
    skip: !photo && `no photos at ${PHOTOS}`,
    timeout: 60_000,
  }, async () => {
    await page.goto(url);
    await page.getByText("Drop a photo anywhere on the page").waitFor();
    await page.getByText(/efficientnet-lite0 encoder/).waitFor(); // the model info loaded
    assert.match(await page.title(), /^captioner: efficientnet-lite0 encoder, \d-layer decoder$/);
    await dropFile(page, readFileSync(join(PHOTOS, photo)), photo, "image/jpeg");
    const words = page.getByRole("group", { name: "Caption words" }).getByRole("button");
    await words.first().waitFor({ timeout: 30_000 });
    assert.ok((await words.count()) > 0);
    const image = page.getByRole("img", { name: /^Photo: / });
    assert.ok(await image.isVisible());

    assert.equal(await paintedPixels(page), 0, "no heatmap before hovering");
    await words.nth(1).hover();
    const heatmap = page.getByTestId("heatmap");
    assert.equal(await heatmap.getAttribute("data-token"), "1");
    assert.ok((await paintedPixels(page)) > 256 * 256 * 0.9, "the heatmap covers the crop");
    await screenshot(page, "desktop-hover");

    // A single head of the last layer draws a different map from the mean.
    const mean = await heatmap.evaluate((c) => c.toDataURL());
    await page.getByLabel("Attention layer").selectOption({ label: "Layer 2" });
    await page.getByLabel("Attention head").selectOption({ label: "Head 3" });
    await words.nth(1).hover();
    assert.notEqual(await heatmap.evaluate((c) => c.toDataURL()), mean);

    // Greedy decoding asks the server again: the page then shows the greedy caption.
    const greedy = await serverCaption(url, readFileSync(join(PHOTOS, photo)), photo, 1);
    const answered = page.waitForResponse((r) => r.url().endsWith("/api/caption"));
    await page.getByLabel("Decoding").selectOption({ label: "Greedy" });
    await answered;
    await page.getByRole("img", { name: `Photo: ${greedy.caption}` }).waitFor();
    // Written as a sentence by --sentence-case's rule, each token still a word to point at.
    const sentence = pythonSentence(greedy.caption);
    const group = page.getByRole("group", { name: "Caption words" });
    assert.equal(await group.textContent(), sentence);
    const lower = (texts) => texts.map((t) => t.toLowerCase());
    assert.deepEqual(lower(await words.allTextContents()), lower(greedy.tokens));
    await page.getByRole("button", { name: "Copy caption" }).click();
    await page.getByRole("button", { name: "Copied" }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), sentence);

    await page.setViewportSize({ width: 390, height: 844 }); // a phone
    await words.first().click(); // a tap pins the word
    assert.equal(await heatmap.getAttribute("data-token"), "0");
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than a phone screen`);
    await screenshot(page, "phone");
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  test("a file that is not an image gets a clear error", { timeout: 30_000 }, async () => {
    await dropNotAnImage(page, url);
    problems.expect(/HTTP 415: .*\/api\/caption$/, /console error: Failed to load resource: .* 415/);
  });

  test("the webcam captures a frame, and live mode keeps captioning", { timeout: 60_000 }, async () => {
    await page.goto(url);
    await dropFile(page, readFileSync(join(PHOTOS, photo)), photo, "image/jpeg");
    await page.getByRole("img", { name: /^Photo: / }).waitFor();
    await page.getByRole("button", { name: "Webcam" }).click();
    // The webcam view shows frames it captured, not the last photo.
    assert.equal(await page.locator("figure img").count(), 0);
    assert.equal(await page.getByText("Last captured frame").count(), 0);
    const capture = page.getByRole("button", { name: "Capture frame" });
    await page.waitForFunction(() => !document.querySelector("button[disabled]"));
    await capture.click();
    await page.getByRole("group", { name: "Caption words" }).getByRole("button").first().waitFor();
    await screenshot(page, "webcam");

    let captions = 0;
    page.on("response", (r) => r.url().endsWith("/api/caption") && r.ok() && captions++);
    await page.getByRole("switch").check();
    const deadline = Date.now() + 15_000;
    while (captions < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.ok(captions >= 2, `live mode captioned ${captions} frames`);
    await page.getByRole("switch").uncheck();
  });

  test("a server that cannot be reached is reported", { timeout: 30_000 }, async () => {
    await page.route("**/api/**", (route) => route.abort("connectionrefused"));
    await page.goto(url);
    await page.getByText("Can't reach the captioning server").waitFor();
    await page.unroute("**/api/**");
    await page.getByRole("button", { name: "Retry" }).click();
    await page.getByText("Can't reach the captioning server").waitFor({ state: "detached" });
    problems.expect(
      /request failed: .*\/api\/health net::ERR_CONNECTION_REFUSED/,
      /console error: Failed to load resource: net::ERR_CONNECTION_REFUSED/,
    );
  });
});
