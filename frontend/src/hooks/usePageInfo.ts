import { useEffect, useState } from "react";
import { readPageInfo } from "../pageInfo";
import type { PageInfo } from "../pageInfo";

/** What page.json says about where the page runs; null until it is read. */
export function usePageInfo(): PageInfo | null {
  const [info, setInfo] = useState<PageInfo | null>(null);
  useEffect(() => {
    let current = true;
    readPageInfo().then((read) => current && setInfo(read));
    return () => {
      current = false;
    };
  }, []);
  return info;
}
