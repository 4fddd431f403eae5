// MathJax 3 configuration shared by the markdown pages (pymdownx.arithmatex, generic
// mode, which wraps maths in `\( \)` / `\[ \]` inside `.arithmatex` elements) and the
// executed tutorials (mkdocs-jupyter keeps `$...$` / `$$...$$` in rendered markdown).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown",
  },
};

document$.subscribe(() => {
  if (window.MathJax && MathJax.typesetPromise) {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    MathJax.typesetPromise();
  }
});
