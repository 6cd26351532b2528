// The README's screenshots of the page, from the current build: the static site `captioner export
// --web` writes (the bundled model), a photo, a word hovered; on a desktop and a phone. Saved as
// 256-colour PNGs (Pillow) to keep them small. Run from frontend/ after `npm run build`:
//   node e2e/screenshots.mjs ../docs/images [PHOTO]
// The README's come from NASA's public-domain astronaut portrait (scikit-image's sample data,
// skimage/data/astronaut.png): a photo the repository may carry, unlike Flickr8k's.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import {
  captionOfNewPhoto,
  dropFile,
  freePort,
  launchChromium,
  PHOTOS,
  photos,
  PYTHON,
  ROOT,
  runCaptioner,
  waitForUrl,
} from "./helpers.mjs";

const out = resolve(process.argv[2] ?? "../docs/images");
const work = mkdtempSync(join(tmpdir(), "captioner-screenshots-"));
const site = join(work, "site");
const exported = runCaptioner(["export", join(ROOT, "src/captioner/pretrained/flickr8k-effnet"), "--web", site]);
if (exported.status !== 0) throw new Error(exported.stderr);
const port = await freePort();
const url = `http://127.0.0.1:${port}`;
const server = spawn(PYTHON, ["-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", site], {
  stdio: "ignore",
});
const { context, page, problems } = await launchChromium(join(work, "profile"));
try {
  await waitForUrl(`${url}/index.html`, server, 30);
  const chosen = process.argv[3] ? resolve(process.argv[3]) : join(PHOTOS, photos(2)[1]);
  const name = basename(chosen);
  const type = name.endsWith(".png") ? "image/png" : "image/jpeg";
  await page.setViewportSize({ width: 1100, height: 640 });
  await page.goto(url);
  await captionOfNewPhoto(page, () => dropFile(page, readFileSync(chosen), name, type));
  const words = page.getByRole("group", { name: "Caption words" }).getByRole("button");
  await words.nth(1).hover();
  const shots = [join(work, "page-desktop.png"), join(work, "page-phone.png")];
  await page.screenshot({ path: shots[0] });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.mouse.move(0, 0);
  await words.nth(1).click(); // a tap pins the word
  await page.screenshot({ path: shots[1] });
  problems.assertNone();
  const quantise = `
import sys
from pathlib import Path
from PIL import Image
for shot in sys.argv[2:]:
    image = Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(Path(sys.argv[1]) / Path(shot).name, optimize=True)
`;
  const saved = spawnSync(PYTHON, ["-c", quantise, out, ...shots], { encoding: "utf8" });
  if (saved.status !== 0) throw new Error(saved.stderr);
  console.log(`saved ${shots.map((s) => s.split("/").at(-1)).join(", ")} to ${out}`);
} finally {
  await context.close();
  server.kill();
  rmSync(work, { recursive: true, force: true });
}
