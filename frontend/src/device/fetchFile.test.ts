import { gzipSync } from "node:zlib";
import { fetchFile, gunzip, isGzip } from "./fetchFile";

const graph = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) % 13); // compressible
const packed = new Uint8Array(gzipSync(graph));

/** A static file server holding `files` (path -> bytes); what it was asked for goes in `asked`. */
function serve(files: Record<string, Uint8Array<ArrayBuffer>>, asked: string[] = []) {
  vi.stubGlobal("fetch", async (url: string) => {
    const path = new URL(url).pathname;
    asked.push(path);
    return path in files ? new Response(files[path]) : new Response("not found", { status: 404 });
  });
}

afterEach(() => vi.unstubAllGlobals());

test("gunzip gives back what gzip compressed", async () => {
  expect(isGzip(packed)).toBe(true);
  expect(isGzip(graph)).toBe(false);
  expect(await gunzip(packed)).toEqual(graph);
});

test("a .gz file is fetched decompressed; any other name as it is", async () => {
  const asked: string[] = [];
  serve({ "/model/step.onnx.gz": packed, "/model/encoder.onnx": graph, "/model/raw.bin": packed }, asked);
  expect(await fetchFile("http://site/model/step.onnx.gz")).toEqual(graph);
  expect(await fetchFile("http://site/model/encoder.onnx")).toEqual(graph);
  expect(await fetchFile("http://site/model/raw.bin")).toEqual(packed); // not named .gz: kept
  expect(asked).toEqual(["/model/step.onnx.gz", "/model/encoder.onnx", "/model/raw.bin"]);
});

test("a .gz file the server already decompressed (Content-Encoding: gzip) is taken as it came", async () => {
  serve({ "/model/step.onnx.gz": graph });
  expect(await fetchFile("http://site/model/step.onnx.gz")).toEqual(graph);
});

test("a missing file or cut-off gzip data is an error that names the file", async () => {
  serve({ "/model/cut.onnx.gz": packed.subarray(0, packed.length / 2) });
  await expect(fetchFile("http://site/model/gone.onnx.gz")).rejects.toThrow(
    "http://site/model/gone.onnx.gz answered 404",
  );
  await expect(fetchFile("http://site/model/cut.onnx.gz")).rejects.toThrow(
    "http://site/model/cut.onnx.gz is not whole gzip data",
  );
});

test("the download is followed byte by byte, against the Content-Length", async () => {
  const chunks = [graph.subarray(0, 2000), graph.subarray(2000, 4500), graph.subarray(4500)];
  vi.stubGlobal("fetch", async () => {
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const chunk of chunks) controller.enqueue(chunk);
        controller.close();
      },
    });
    return new Response(body, { headers: { "content-length": String(graph.length) } });
  });
  const seen: [number, number | null][] = [];
  expect(await fetchFile("http://site/model/encoder.onnx", (loaded, total) => seen.push([loaded, total]))).toEqual(
    graph,
  );
  expect(seen).toEqual([
    [0, 5000],
    [2000, 5000],
    [4500, 5000],
    [5000, 5000],
  ]);
});

test("a file without a Content-Length, or compressed on the way, is followed with no total", async () => {
  const seen: (number | null)[] = [];
  serve({ "/model/step.onnx.gz": packed });
  expect(await fetchFile("http://site/model/step.onnx.gz", (_, total) => seen.push(total))).toEqual(graph);
  vi.stubGlobal("fetch", async () =>
    new Response(graph, { headers: { "content-length": "123", "content-encoding": "gzip" } }),
  );
  await fetchFile("http://site/model/encoder.onnx", (_, total) => seen.push(total));
  expect(new Set(seen)).toEqual(new Set([null]));
});
