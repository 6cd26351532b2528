import { findDeviceModel } from "./deviceBackend";
import { FORMAT, FORMAT_VERSION } from "./exported";

/** The site's model folder answering `description` as its captioner.json. */
function serveDescription(description: unknown) {
  vi.stubGlobal("fetch", async () => new Response(JSON.stringify(description)));
}

afterEach(() => vi.unstubAllGlobals());

const description = {
  format: FORMAT,
  version: FORMAT_VERSION,
  variants: { int8: { encoder: "encoder.onnx", image: "decoder_image.int8.onnx.gz", step: "s.onnx.gz" } },
  encoder: { name: "efficientnet-lite2", grid_h: 1, grid_w: 1, dim: 8 },
  preprocess: { crop_size: 224 },
  decoder: { n_layers: 3, n_heads: 2, d_model: 8 },
  generation: { num_beams: 3 },
};

test("a model of this page's format version is offered", async () => {
  serveDescription(description);
  const backend = await findDeviceModel("model/");
  expect(backend?.kind).toBe("device");
  expect(backend?.model.decoder.layers).toBe(3);
});

test("a model exported before the options took Hugging Face's names starts from its own beam", async () => {
  serveDescription({ ...description, generation: { beam_size: 5 } });
  expect((await findDeviceModel("model/"))?.model.generation.num_beams).toBe(5);
});

test("a model of another format version is refused with what to do, not run wrongly", async () => {
  for (const version of [1, FORMAT_VERSION + 1]) {
    serveDescription({ ...description, version });
    await expect(findDeviceModel("model/")).rejects.toThrow(
      `the model beside this page is format version ${version} and this page reads version ` +
        `${FORMAT_VERSION}: export the site again (captioner export --web) with one captioner`,
    );
  }
});

test("no captioner.json there (a dev server's index.html, say) is no model", async () => {
  serveDescription({ hello: "world" });
  expect(await findDeviceModel("model/")).toBeNull();
  vi.stubGlobal("fetch", async () => new Response("nope", { status: 404 }));
  expect(await findDeviceModel("model/")).toBeNull();
});
