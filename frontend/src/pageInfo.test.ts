import { PAGE_FORMAT, readPageInfo, UNKNOWN_PAGE } from "./pageInfo";

function answer(response: () => Response | Promise<Response>) {
  const asked: string[] = [];
  vi.stubGlobal("fetch", async (url: string) => {
    asked.push(url);
    return response();
  });
  return asked;
}

afterEach(() => vi.unstubAllGlobals());

test("page.json says whether a server is behind the page and a model beside it", async () => {
  const asked = answer(() => Response.json({ format: PAGE_FORMAT, server: false, device_model: true }));
  expect(await readPageInfo()).toEqual({ server: false, deviceModel: true });
  expect(asked).toEqual([new URL("page.json", document.baseURI).href]);
});

test("without a page.json that reads as one, the page tries both", async () => {
  answer(() => new Response("not found", { status: 404 }));
  expect(await readPageInfo()).toEqual(UNKNOWN_PAGE);
  answer(() => new Response("<!doctype html>", { headers: { "content-type": "text/html" } }));
  expect(await readPageInfo()).toEqual(UNKNOWN_PAGE);
  answer(() => Response.json({ format: "something-else", server: false, device_model: false }));
  expect(await readPageInfo()).toEqual(UNKNOWN_PAGE);
  answer(() => Promise.reject(new TypeError("Failed to fetch")));
  expect(await readPageInfo()).toEqual(UNKNOWN_PAGE);
  expect(UNKNOWN_PAGE).toEqual({ server: true, deviceModel: true });
});
